"""The rules: which event gets which job (docs/act.md, "The rules").

- A `suspend` shutdown is never acted upon: the migrating toolstack owns the domain. If
  the domain is resumed (a failed migration), act keeps watching it and acts on its next
  shutdown; if it dies (a successful migration), only the `on_death` hooks run.
- Any other shutdown is acted upon at most once per shutdown of one incarnation (domid and
  UUID): a `resumed` re-arms it, a `death` forgets it.
- A death never starts an action, only the `on_death` hooks, whoever destroyed the domain.
- Domains being migrated in (`NAME--incoming`), excluded domains and dom0 are left alone.
- At a first start (no cursor), domains found shut down (not suspended) are handled as if
  the shutdown had just happened.

The decider only makes jobs and writes them to the record; the executor carries them out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mux.act.policy import Policy, migrating_in
from mux.act.record import Job, Record

log = logging.getLogger("xenmux.act")

SUSPEND = "suspend"


class Decider:
    def __init__(
        self, record: Record, policy: Callable[[], Policy], submit: Callable[[Job], None]
    ) -> None:
        self.record = record
        self.policy = policy
        self.submit = submit
        self.names: dict[int, tuple[str, str]] = {}  # domid -> (uuid, name)

    def remember(self, domid: int, uuid: str, name: str | None) -> str:
        known = self.names.get(domid)
        if name:
            self.names[domid] = (uuid, name)
            return name
        if known is not None and known[0] == uuid:
            return known[1]
        return ""

    def snapshot(self, rows: list[dict], seq: int | None) -> None:
        """The state act found at a first start: shut-down domains count as just shut down."""
        for row in rows:
            name = self.remember(row["domid"], row["uuid"], row.get("name"))
            if row.get("state") == "shutdown" and row.get("reason"):
                self._shutdown(row["domid"], row["uuid"], name, row["reason"], seq)

    def event(self, ev: dict) -> None:
        kind = ev["event"]
        domid = ev["domid"]
        uuid = ev["uuid"]
        name = self.remember(domid, uuid, ev.get("name"))
        if kind == "shutdown":
            self._shutdown(domid, uuid, name, ev.get("reason") or "", ev.get("seq"))
        elif kind == "resumed":
            self.record.rearm(domid, uuid)
        elif kind == "death":
            if (domid, uuid) in self.record.died:
                return  # replayed after a restart of act: its hooks have their job already
            self._death(domid, uuid, name, ev.get("reason"), ev.get("seq"))
            self.record.dead(domid, uuid)
        elif kind == "released" and self.names.get(domid, ("",))[0] == uuid:
            del self.names[domid]

    def _left_alone(self, domid: int, uuid: str, name: str) -> bool:
        if domid == 0:
            return True
        if migrating_in(name):
            log.info("domain %d (%s) is being migrated in: not acted upon", domid, name)
            return True
        return self.policy().plan(name, uuid).excluded

    def _shutdown(self, domid: int, uuid: str, name: str, reason: str, seq: int | None) -> None:
        if self._left_alone(domid, uuid, name):
            return
        if reason == SUSPEND:
            log.info(
                "domid=%d name=%s reason=suspend: not acted upon (the migrating toolstack "
                "owns it; watched until it is resumed or dies)",
                domid,
                name or "-",
            )
            return
        if (domid, uuid) in self.record.acted:
            return  # this shutdown of this incarnation has its job already
        self.submit(self.record.new_job("shutdown", domid, uuid, name, reason, seq))

    def _death(self, domid: int, uuid: str, name: str, reason: str | None, seq) -> None:
        if self._left_alone(domid, uuid, name):
            return
        if self.policy().plan(name, uuid).hooks("on_death"):
            self.submit(self.record.new_job("on_death", domid, uuid, name, reason, seq))
