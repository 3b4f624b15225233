"""Domains (domain.c): the introduced domains, the shutdown latch, the domain pass on
VIRQ_DOM_EXC (C's check_domains, or oxenstored's Domains.cleanup without the latch), and
the domain requests (INTRODUCE, RELEASE, RESUME, IS_DOMAIN_INTRODUCED,
GET_DOMAIN_PATH, SET_TARGET, GET_FEATURE, SET_FEATURE).

`Domains` is a read-only mapping domid -> XsDomain of the introduced domains; changes go
through its methods, which fire the special watches as C does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from mux.sim._simfast import DomainPass
from mux.sim.xenstored.payload import OK, XsError, c_atoi, onearg, strings
from mux.sim.xenstored.rules import FLAVOUR_C
from mux.sim.xenstored.store import DEFAULT_PERMS
from mux.xenstore import wire

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from mux.sim.xenstored.counters import Counters
    from mux.sim.xenstored.interfaces import Client as XsConnection
    from mux.sim.xenstored.interfaces import Server as Xenstored
    from mux.sim.xenstored.rules import Rules
    from mux.sim.xenstored.transactions import Transaction
    from mux.sim.xenstored.watches import WatchTable

DOMID_SELF = 0x7FF0
PRIV_DOMID = 0

_DOMID_4_22 = re.compile(rb"\s*\+?(\d*)")


class XsDomain:
    """What xenstored keeps per introduced domain. Its shutdown latch (a @releaseDomain was
    fired for its shutdown) lives in the domain pass's C list, which the pass sets."""

    __slots__ = ("_pass", "domid", "features")

    def __init__(self, domid: int, features: int, domain_pass: DomainPass) -> None:
        self.domid = domid
        self.features = features
        self._pass = domain_pass

    @property
    def shutdown(self) -> bool:
        return self._pass.latched(self.domid)

    @shutdown.setter
    def shutdown(self, value: bool) -> None:
        self._pass.set_latched(self.domid, value)

    def __repr__(self) -> str:
        return f"XsDomain(domid={self.domid}, features={self.features}, shutdown={self.shutdown})"


class DomainSource:
    """What the domain pass asks the hypervisor (the sim's host implements it)."""

    def domain_flags(self, domid: int) -> int | None:
        """The domain's XEN_DOMINF_* flags (as getdomaininfo), or None when the domid is free."""
        raise NotImplementedError

    def flags_table(self) -> ReadableBuffer:
        """The same for every domid at once: int64 flags indexed by domid (DOMID_SLOTS of
        them), negative where the domid is free. The pass on each VIRQ reads it in C."""
        raise NotImplementedError


class Domains(Mapping[int, XsDomain]):
    """The introduced domains, and what xenstored does to them."""

    def __init__(
        self, hv: DomainSource, rules: Rules, watches: WatchTable, counters: Counters
    ) -> None:
        self.hv = hv
        self.rules = rules
        self.watches = watches
        self.counters = counters
        self._introduced: dict[int, XsDomain] = {}
        self._pass = DomainPass()  # their order and latches, and the pass on VIRQ
        self.features: dict[int, int] = {}  # SET_FEATURE before INTRODUCE
        self.special_perms = {
            wire.SPECIAL_RELEASE: DEFAULT_PERMS,
            wire.SPECIAL_INTRODUCE: DEFAULT_PERMS,
        }
        # dom0 is introduced by xenstored itself at start-up (dom0_init), firing nothing.
        self._add(PRIV_DOMID, rules.features)

    def __getitem__(self, domid: int) -> XsDomain:
        return self._introduced[domid]

    def __iter__(self) -> Iterator[int]:
        return iter(self._introduced)

    def __len__(self) -> int:
        return len(self._introduced)

    def __contains__(self, domid: object) -> bool:
        return domid in self._introduced

    @property
    def domain_pass(self) -> DomainPass:
        return self._pass

    def forgotten(self, domid: int) -> None:
        """The change thread's pass destroyed `domid` (it left the pass and fired already)."""
        self._introduced.pop(domid, None)

    def _add(self, domid: int, features: int) -> None:
        self._pass.add(domid)
        self._introduced[domid] = XsDomain(domid, features, self._pass)

    def introduce(self, domid: int) -> bool:
        """Add a domain to the introduced list; True if it was new (and fired)."""
        if domid in self._introduced:
            return False
        self._add(domid, self.features.pop(domid, self.rules.features))
        if domid != PRIV_DOMID:
            self.watches.fire_special(wire.SPECIAL_INTRODUCE, domid, True, True)
        return True

    def _destroy(self, domid: int, *, fire: bool = True) -> None:
        """destroy_domain(): forget an introduced domain and (C) fire @releaseDomain for it."""
        if self._introduced.pop(domid, None) is None:
            return
        self._pass.remove(domid)
        if fire:
            self.watches.fire_special(wire.SPECIAL_RELEASE, domid, True, True)

    def _not_introduced(self) -> XsError:
        # C looks the domain up (ENOENT); oxenstored refuses the argument (EINVAL).
        return XsError("ENOENT" if self.rules.flavour == FLAVOUR_C else "EINVAL")

    def release(self, domid: int) -> None:
        if domid == PRIV_DOMID:
            raise XsError("EINVAL")
        if domid not in self._introduced:
            raise self._not_introduced()
        self._destroy(domid)

    def resume(self, domid: int) -> None:
        """XS_RESUME: clears C's latch; oxenstored's (Domains.resume) does nothing, and takes
        any introduced domain, dom0 included."""
        if not self.rules.latch:
            if domid not in self._introduced:
                raise self._not_introduced()
            return
        if domid == PRIV_DOMID:
            raise XsError("EINVAL")
        dom = self._introduced.get(domid)
        if dom is None:
            raise self._not_introduced()
        dom.shutdown = False

    def check_domains(self) -> None:
        """The pass C xenstored runs on each VIRQ_DOM_EXC (check_domains()).

        Over every introduced domain, newest first (C adds to the head of its list): a domain
        newly shut down is latched (and, with depth, fires @releaseDomain/<domid>) and makes
        the pass fire @releaseDomain once at its end; a dying or vanished domain is dropped,
        firing @releaseDomain for itself, which also cancels the end-of-pass firing
        ("destroy_domain() fires the watch"). A latched domain fires nothing until XS_RESUME.
        """
        self.counters.virqs += 1
        steps, notify = self._pass.run(self.hv.flags_table())
        if not self.rules.latch:
            self._cleanup(steps)
            return
        fire_special = self.watches.fire_special
        for domid, dying in steps:
            if dying:
                self._destroy(domid)
            elif self.rules.watch_depth:
                fire_special(wire.SPECIAL_RELEASE, domid, False, True)
        if notify:
            fire_special(wire.SPECIAL_RELEASE, 0, True, False)

    def _cleanup(self, steps: list[tuple[int, bool]]) -> None:
        """oxenstored's pass (Domains.cleanup), from the latching pass's steps: with every
        latch taken back at once, each shut-down domain is a step on every VIRQ. The dead
        are forgotten without firing each; @releaseDomain fires once if any domain is shut
        down or dead (with depth, `@releaseDomain/<domid>` for each of them first)."""
        dead = [domid for domid, dying in steps if dying]
        gone = set(dead)
        shut = [domid for domid, dying in steps if not dying and domid not in gone]
        for domid in shut:
            self._pass.set_latched(domid, False)  # no latch: seen again at the next VIRQ
        for domid in dead:
            self._destroy(domid, fire=False)
        if not (shut or dead):
            return
        fire_special = self.watches.fire_special
        if self.rules.watch_depth:
            for domid in shut + dead:
                fire_special(wire.SPECIAL_RELEASE, domid, False, True)
        fire_special(wire.SPECIAL_RELEASE, 0, True, False)

    def exists(self, domid: int) -> bool:
        """Introduced, or at least known to the hypervisor."""
        return domid in self._introduced or self.hv.domain_flags(domid) is not None

    def set_special_perms(self, name: str, perms: tuple[str, ...]) -> None:
        if name not in self.special_perms:
            raise XsError("EINVAL")
        self.special_perms[name] = perms

    def parse_domid(self, raw: bytes) -> int:
        if not self.rules.strict_domid:
            return c_atoi(raw) & 0xFFFFFFFF
        # parse_domid(): strtoul(.., 10) consuming everything, at most 65535.
        m = _DOMID_4_22.fullmatch(raw)
        if not m:
            raise XsError("EINVAL")
        value = int(m.group(1) or b"0")
        if value > 65535:
            raise XsError("EINVAL")
        return value

    def onearg_domid(self, payload: bytes) -> int:
        arg = onearg(payload)
        if arg is None:
            raise XsError("EINVAL")
        domid = self.parse_domid(arg)
        if domid == PRIV_DOMID:
            raise XsError("EINVAL")
        return domid


# Handlers (rows of core.WIRE_FUNCS) --------------------------------------------------------


def do_introduce(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    args = strings(payload)
    if len(args) < 3:
        raise XsError("EINVAL")
    domains = xs.domains
    domid = domains.parse_domid(args[0])
    if c_atoi(args[2]) <= 0:
        raise XsError("EINVAL")  # event channel port
    if not domains.exists(domid):
        raise XsError("EINVAL")  # no ring page to map: no such domain
    domains.introduce(domid)
    return OK


def do_release(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    xs.domains.release(xs.domains.onearg_domid(payload))
    return OK


def do_resume(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    domains = xs.domains
    if xs.rules.latch:
        domains.resume(domains.onearg_domid(payload))
        return OK
    arg = onearg(payload)  # oxenstored takes dom0 too
    if arg is None:
        raise XsError("EINVAL")
    domains.resume(domains.parse_domid(arg))
    return OK


def do_get_domain_path(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    arg = onearg(payload)
    if arg is None:
        raise XsError("EINVAL")
    return f"/local/domain/{xs.domains.parse_domid(arg)}\0".encode()


def do_is_domain_introduced(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    arg = onearg(payload)
    if arg is None:
        raise XsError("EINVAL")
    domid = xs.domains.parse_domid(arg)
    return b"T\0" if domid == DOMID_SELF or domid in xs.domains else b"F\0"


def do_set_target(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    args = strings(payload)
    if len(args) < 2:
        raise XsError("EINVAL")
    for raw in args[:2]:
        if xs.domains.parse_domid(raw) not in xs.domains:
            raise XsError("ENOENT")
    return OK


def do_get_feature(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    args = strings(payload)
    domains = xs.domains
    if not args:
        features = xs.rules.features
    elif len(args) > 1:
        raise XsError("EINVAL")
    else:
        domid = domains.parse_domid(args[0])
        if domid in domains:
            features = domains[domid].features
        elif domains.exists(domid):
            features = domains.features.get(domid, xs.rules.features)
        else:
            raise XsError("ENOENT")
    return f"{features}\0".encode()


def do_set_feature(
    xs: Xenstored, conn: XsConnection, trans: Transaction | None, payload: bytes
) -> bytes:
    args = strings(payload)
    if len(args) != 2:
        raise XsError("EINVAL")
    domains = xs.domains
    domid = domains.parse_domid(args[0])
    features = c_atoi(args[1]) & 0xFFFFFFFF
    if not domains.exists(domid):
        raise XsError("ENOENT")
    if domid in domains:
        raise XsError("EBUSY")
    if features & ~xs.rules.features:
        raise XsError("EINVAL")
    domains.features[domid] = features
    return OK
