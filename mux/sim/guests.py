"""The simulated toolstack's own records, and what guests do by themselves.

libxl stores each domain's configuration, its on_poweroff / on_reboot / on_watchdog /
on_crash / on_soft_reset actions among it, for as long as the domain exists; `xl list -l`
shows them. `ToolstackBook` is that store for the simulated host: `sim-ctl create
--on-crash preserve ...` fills it, `xenmux act --toolstack sim` reads it, and a destroy
leaves nothing of the domain behind.

It also keeps the host's truth log (DIR/toolstack.log): one JSON line for every create,
destroy, core dump, rename and soft reset, and every shutdown a guest made by itself, as it
happened. Tests read it to tell whether an action was done once, twice or never.

A guest shuts down, reboots, crashes or trips its watchdog on its own: Xen then holds the
domain shut down with that reason (SCHEDOP_shutdown) until a toolstack acts.
"""

from __future__ import annotations

import json
import os
import time

from mux.records import REASON_CODES
from mux.sim.host import Domain, SimError, SimHost, parse_uuid


def check_settings(settings: dict | None) -> dict[str, str]:
    """The on_* settings of a create request, checked (SimError names the bad one)."""
    # The action names come with mux.act's policy, imported at the first use: every sim
    # process imports this module, and few of them ever see a setting or a guest action.
    from mux.sim.ctl import ACTIONS, SETTING_KEYS

    out = {}
    for key, value in (settings or {}).items():
        if key not in SETTING_KEYS:
            raise SimError(f"unknown setting {key!r} (known: {', '.join(SETTING_KEYS)})")
        if value not in ACTIONS:
            raise SimError(f"{key}: {value!r} is not an action (one of {', '.join(ACTIONS)})")
        out[key] = value
    return out


class ToolstackBook:
    def __init__(self, host: SimHost, log_path: str) -> None:
        self.host = host
        self.settings: dict[tuple[int, str], dict[str, str]] = {}
        self.log_path = log_path
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115

    def note(self, op: str, dom: Domain, **extra) -> None:
        line = {"op": op, "domid": dom.domid, "uuid": dom.uuid, "name": dom.name, **extra}
        line["time"] = round(time.time(), 6)
        self._log.write(json.dumps(line) + "\n")
        self._log.flush()

    def created(self, doms: list[Domain], settings: dict[str, str], by: str | None) -> None:
        for dom in doms:
            if settings:
                self.settings[(dom.domid, dom.uuid)] = dict(settings)
            self.note("create", dom, by=by)

    def destroyed(self, doms: list[Domain], by: str | None) -> None:
        for dom in doms:
            self.settings.pop((dom.domid, dom.uuid), None)
            self.note("destroy", dom, by=by)

    def destroy_incarnations(self, pairs: list, by: str | None) -> list[bool]:
        """Destroy each (domid, uuid) that is still that incarnation, in one table change;
        for each, whether it was there to destroy."""
        there = []
        for domid, uuid in pairs:
            dom = self.host.hv.domains.get(int(domid))
            there.append(dom is not None and dom.domid != 0 and dom.uuid == uuid)
        doomed = sorted({int(p[0]) for p, ok in zip(pairs, there, strict=True) if ok})
        if doomed:
            self.destroyed(self.host.destroy(doomed), by)
        return there

    def rows(self, domids: list) -> list[dict | None]:
        out = []
        for domid in domids:
            dom = self.host.hv.domains.get(int(domid))
            out.append(None if dom is None else self.row(dom))
        return out

    def row(self, dom: Domain) -> dict:
        row = dom.as_dict()
        row["settings"] = dict(self.settings.get((dom.domid, dom.uuid), {}))
        return row

    def guest(self, domid: int, what: str) -> Domain:
        """The guest shuts itself down (`poweroff`, `reboot`, `crash`, `watchdog`,
        `soft_reset`): the domain stays shut down until a toolstack acts."""
        from mux.sim.ctl import GUEST_ACTIONS  # at the first use, as in check_settings

        if what not in GUEST_ACTIONS:
            raise SimError(f"a guest can {', '.join(GUEST_ACTIONS)}, not {what!r}")
        [dom] = self.host.shutdown(domid, REASON_CODES[what])
        self.note("guest", dom, reason=what)
        return dom

    def dump_core(self, domid: int, path: str, by: str | None) -> Domain:
        """What `xl dump-core` leaves: a file (here a JSON description of the domain)."""
        dom = self.host.get(domid)
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(dom.as_dict(), f)
        except OSError as exc:
            raise SimError(f"cannot write the core dump {path}: {exc.strerror}") from None
        self.note("dump-core", dom, path=path, by=by)
        return dom

    def rename(self, domid: int, name: str, uuid: str, by: str | None) -> Domain:
        """libxl_domain_preserve: the domain keeps running (or shut down) under a new name
        and UUID, so that its old name and UUID can be created again."""
        dom = self.host.get(domid)
        if dom.dying:
            raise SimError(f"domain {domid} is dying")
        old_uuid = dom.uuid
        settings = self.settings.pop((domid, old_uuid), None)
        self.host.toolstack.remove_domain(domid, old_uuid)
        dom.name = name
        dom.set_handle(parse_uuid(uuid))
        self.host.hv.update([dom], virq=False, step="rename", old_uuid=old_uuid)
        self.host.toolstack.write_domain(dom)
        if settings:
            self.settings[(domid, dom.uuid)] = settings
        self.note("rename", dom, old_uuid=old_uuid, by=by)
        return dom

    def soft_reset(self, domid: int, by: str | None) -> Domain:
        """The domain starts again in place (same domid), as after libxl's soft reset."""
        dom = self.host.resume(domid)
        self.note("soft-reset", dom, by=by)
        return dom

    def close(self) -> None:
        self._log.close()
