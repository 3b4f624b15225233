"""The simulated host's ground truth (DIR/truth.jsonl, docs/sim.md) as incarnations."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

# Only these shutdowns can be undone by a resume (docs/protocol.md, reasons at death).
UNDOABLE = frozenset({"suspend", "soft_reset"})


class TruthError(ValueError):
    """The truth log cannot be read (the message names the line)."""


@dataclass
class Incarnation:
    """One domain incarnation as the hypervisor lived it; times are CLOCK_MONOTONIC ns."""

    inc: int
    domid: int
    uuid: str
    name: str | None
    born: int
    born_wall: float
    shutdowns: list[tuple[int, str]] = field(default_factory=list)  # (mono, reason)
    resumes: list[int] = field(default_factory=list)
    dying: int | None = None
    gone: int | None = None

    @property
    def died(self) -> int | None:
        """When it died: the record turned dying, or (never seen dying) was removed."""
        return self.dying if self.dying is not None else self.gone

    def reason_at_death(self) -> str | None:
        """The shutdown reason in force when it died: its last shutdown, unless a resume
        (the domain ran again) came after it. None when it was not shut down then."""
        died = self.died
        if died is None:
            return None
        last = [(t, r) for t, r in self.shutdowns if t <= died]
        if not last:
            return None
        t_last, reason = last[-1]
        if any(t_last < t <= died for t in self.resumes):
            return None
        return reason

    def reasons_by(self, t: int) -> set[str]:
        """Reasons of the shutdowns it had by time t."""
        return {r for ts, r in self.shutdowns if ts <= t}

    def resumed_by(self, t: int) -> bool:
        return any(ts <= t for ts in self.resumes)


@dataclass
class Truth:
    incarnations: dict[int, Incarnation]
    by_domid: dict[int, list[Incarnation]]  # each domid's incarnations in birth order
    wall_offset: float = 0.0  # Unix time minus CLOCK_MONOTONIC (s), as the host stamped them

    def mono_of(self, wall: float) -> int:
        """CLOCK_MONOTONIC ns of a Unix time (the daemon's `time` fields)."""
        return int((wall - self.wall_offset) * 1e9)

    @classmethod
    def from_entries(cls, entries: Iterable[dict]) -> Truth:
        incs: dict[int, Incarnation] = {}
        for n, e in enumerate(entries, 1):
            try:
                step, inc = e["step"], e["inc"]
                if step == "create":
                    if inc in incs:
                        raise TruthError(f"truth line {n}: incarnation {inc} created twice")
                    incs[inc] = Incarnation(
                        inc, e["domid"], e["uuid"], e.get("name"), e["mono"], e["wall"]
                    )
                    continue
                dom = incs.get(inc)
                if dom is None:
                    raise TruthError(f"truth line {n}: {step} of incarnation {inc} before create")
                if step == "shutdown":
                    dom.shutdowns.append((e["mono"], e["reason"]))
                elif step == "resume":
                    dom.resumes.append(e["mono"])
                elif step == "dying":
                    dom.dying = e["mono"]
                elif step == "gone":
                    dom.gone = e["mono"]
                elif step == "rename":  # xenmux act's rename-restart on the sim toolstack
                    raise TruthError(
                        f"truth line {n}: a rename (a domain given another UUID in place) "
                        "is not modelled by the oracle: do not run act's rename-restart "
                        "under chaos"
                    )
                else:
                    raise TruthError(f"truth line {n}: unknown step {step!r}")
            except (KeyError, TypeError) as exc:
                raise TruthError(f"truth line {n}: missing or bad field {exc}") from None
        by_domid: dict[int, list[Incarnation]] = {}
        for dom in sorted(incs.values(), key=lambda d: (d.born, d.inc)):
            by_domid.setdefault(dom.domid, []).append(dom)
        first = min(incs.values(), key=lambda d: d.inc, default=None)
        offset = 0.0 if first is None else first.born_wall - first.born / 1e9
        return cls(incs, by_domid, offset)

    @classmethod
    def load(cls, path: str) -> Truth:
        def entries():
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.endswith("\n"):
                        return  # a last line cut short: the sim was killed mid-write
                    try:
                        yield json.loads(line)
                    except ValueError as exc:
                        raise TruthError(f"{path} line {n}: {exc}") from None

        return cls.from_entries(entries())
