"""What differs between the xenstored versions and flavours the sim models, in one place.

Handlers never compare version strings: they ask the `Rules` of their server. A version
or flavour the sim learns to model is a new entry of RULES; a rule that differs in a way no
field says yet becomes a new field here, read by the one handler it changes.

Two flavours: C xenstored (the versions 4.17, 4.21, 4.22) and oxenstored: Xen's own, as
Debian's 4.17 runs it (tests/data/xenstored_conformance.json), and xapi-project's since
v25.2.0, which takes depth-1 special watches. How `xenmux sim --xen-version`, `--xenstored`
and `--xs-version` pick one: `xenstored_version` (docs/xen-versions.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mux.xenstore import wire

# XENSTORE_FEATURES of the 4.22 C xenstored: ERROR | WATCHDEPTH | DOMID_ANY.
FEATURE_DOMID_ANY = 8
FEATURES_4_22 = (
    wire.XENSTORE_SERVER_FEATURE_ERROR | wire.XENSTORE_SERVER_FEATURE_WATCHDEPTH | FEATURE_DOMID_ANY
)

# The message types C xenstored 4.17 handles (wire_funcs[] rows with a function).
TYPES_4_17 = frozenset(
    (
        wire.XS_CONTROL,
        wire.XS_DIRECTORY,
        wire.XS_READ,
        wire.XS_GET_PERMS,
        wire.XS_WATCH,
        wire.XS_UNWATCH,
        wire.XS_TRANSACTION_START,
        wire.XS_TRANSACTION_END,
        wire.XS_INTRODUCE,
        wire.XS_RELEASE,
        wire.XS_GET_DOMAIN_PATH,
        wire.XS_WRITE,
        wire.XS_MKDIR,
        wire.XS_RM,
        wire.XS_SET_PERMS,
        wire.XS_IS_DOMAIN_INTRODUCED,
        wire.XS_RESUME,
        wire.XS_SET_TARGET,
        wire.XS_RESET_WATCHES,
        wire.XS_DIRECTORY_PART,
    )
)


FLAVOUR_C = "c"
FLAVOUR_OXENSTORED = "oxenstored"
FLAVOURS = (FLAVOUR_C, FLAVOUR_OXENSTORED)

# The message types Debian's oxenstored 4.17 handles: C's less DIRECTORY_PART (ENOSYS).
TYPES_OXENSTORED = TYPES_4_17 - {wire.XS_DIRECTORY_PART}


@dataclass(frozen=True)
class Rules:
    version: str
    # The XS_* types answered; any other is ENOSYS.
    message_types: frozenset[int]
    # The XENSTORE_SERVER_FEATURE_* bits: GET_FEATURE's answer, a new domain's features,
    # what SET_FEATURE may set.
    features: int
    # WATCH takes a depth argument; special watches also fire as `@releaseDomain/<domid>`
    # (and may be set on such a name); special watch names are checked as node names are.
    watch_depth: bool
    # parse_domid(): the whole argument, decimal, at most 65535, else EINVAL (4.17: atoi).
    strict_domid: bool
    flavour: str = FLAVOUR_C
    # C's shutdown latch: a domain's shutdown fires once, until XS_RESUME (or a new
    # INTRODUCE) clears it. Without it (oxenstored's Domains.cleanup) every VIRQ fires
    # @releaseDomain once while any introduced domain is shut down or dead, a destroyed
    # domain fires nothing of its own, and XS_RESUME changes nothing.
    latch: bool = True
    # A request with an empty payload is handled only once more bytes arrive on its
    # connection (oxenstored's reader: its GET_FEATURE's ENOSYS comes out with the next
    # request's reply).
    holds_empty_requests: bool = False
    # GET_PERMS of a special watch name answers its permissions (oxenstored keeps them as
    # nodes); C xenstored answers EINVAL.
    special_perms_readable: bool = False
    # The depths a special watch may be set with (None: any the server takes); a watch on
    # `@releaseDomain/<domid>` then takes none (xapi-project's oxenstored).
    special_watch_depths: frozenset[int] | None = None


RULES: dict[str, Rules] = {
    "4.17": Rules("4.17", TYPES_4_17, features=0, watch_depth=False, strict_domid=False),
    # 4.21 (tools/xenstored, RELEASE-4.21.0): GET_FEATURE/SET_FEATURE with
    # XENSTORE_FEATURES = ERROR only; no watch depth; domids still parsed with atoi.
    "4.21": Rules(
        "4.21",
        TYPES_4_17 | {wire.XS_GET_FEATURE, wire.XS_SET_FEATURE},
        features=wire.XENSTORE_SERVER_FEATURE_ERROR,
        watch_depth=False,
        strict_domid=False,
    ),
    # Juergen Gross's patches "add depth handling to XS_WATCH" and "expand special watch
    # handling with depth feature", with GET_FEATURE/SET_FEATURE.
    "4.22": Rules(
        "4.22",
        TYPES_4_17 | {wire.XS_GET_FEATURE, wire.XS_SET_FEATURE},
        features=FEATURES_4_22,
        watch_depth=True,
        strict_domid=True,
    ),
}
# Xen's oxenstored (tools/ocaml/xenstored), as Debian's 4.17 answers: no latch, a no-op
# XS_RESUME (EINVAL for a domain never introduced, OK for dom0), no GET_FEATURE, no depth.
_OXENSTORED = Rules(
    "oxenstored",
    TYPES_OXENSTORED,
    features=0,
    watch_depth=False,
    strict_domid=False,
    flavour=FLAVOUR_OXENSTORED,
    latch=False,
    holds_empty_requests=True,
    special_perms_readable=True,
)
RULES["oxenstored"] = _OXENSTORED
# xapi-project's oxenstored since v25.2.0 (2025-10-28): the same, and special watches with
# depth 1 fire as `@releaseDomain/<domid>` and `@introduceDomain/<domid>`; it still
# advertises nothing.
RULES["oxenstored-25.2"] = replace(
    _OXENSTORED,
    version="oxenstored-25.2",
    watch_depth=True,
    special_watch_depths=frozenset({1}),
)
# `--xs-version`: a C xenstored's version, or with `--xenstored oxenstored` the oxenstored
# release: a Xen one (xen.git's oxenstored: the same rules in every release the sim
# models) or xapi-project's 25.2 (v25.2.0 and later).
C_XS_VERSIONS = ("4.17", "4.21", "4.22")
XAPI_OXENSTORED_VERSIONS = ("25.2",)
XS_VERSIONS = (*C_XS_VERSIONS, *XAPI_OXENSTORED_VERSIONS)

# `xenmux sim --xen-version`: the C xenstored each Xen release ships, as far as the rules
# above tell them apart (4.20's is 4.17's here: no GET_FEATURE, no depth, atoi domids).
# `--xs-version` overrides this choice of rules alone (docs/sim.md).
XENSTORED_OF_XEN = {"4.17": "4.17", "4.20": "4.17", "4.21": "4.21", "4.22": "4.22"}
XEN_VERSIONS = tuple(XENSTORED_OF_XEN)


def xenstored_version(
    xen_version: str, xs_version: str | None = None, flavour: str = FLAVOUR_C
) -> str:
    """The xenstored rules (a key of RULES) a sim of `xen_version` runs.

    C xenstored: `xs_version` when given, else the one that release ships. oxenstored:
    xapi-project's rules for `xs_version` 25.2, else Xen's own (for every Xen release:
    what the sim models of it did not change from 4.17's).
    """
    if xen_version not in XENSTORED_OF_XEN:
        raise ValueError(f"unknown Xen version {xen_version!r}: use one of {XEN_VERSIONS}")
    if flavour == FLAVOUR_OXENSTORED:
        if xs_version in XAPI_OXENSTORED_VERSIONS:
            return f"oxenstored-{xs_version}"
        if xs_version is None or xs_version in C_XS_VERSIONS or xs_version in XEN_VERSIONS:
            return "oxenstored"
        raise ValueError(f"unknown oxenstored version {xs_version!r}: use one of {XS_VERSIONS}")
    if flavour != FLAVOUR_C:
        raise ValueError(f"unknown xenstored flavour {flavour!r}: use one of {FLAVOURS}")
    if xs_version in XAPI_OXENSTORED_VERSIONS:
        raise ValueError(
            f"xenstored version {xs_version} is xapi-project's oxenstored: add "
            "--xenstored oxenstored, or give a C xenstored's version "
            f"({', '.join(C_XS_VERSIONS)})"
        )
    return xs_version or XENSTORED_OF_XEN[xen_version]


def rules_for(xs_version: str) -> Rules:
    rules = RULES.get(xs_version)
    if rules is None:
        raise ValueError(f"unknown xenstored rules {xs_version!r}: use one of {tuple(RULES)}")
    return rules
