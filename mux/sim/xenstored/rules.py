"""What differs between the xenstored versions the sim models, in one place.

Handlers never compare version strings: they ask the `Rules` of their server. A version
or flavour the sim learns to model (another Xen release, oxenstored's firing rules) is a
new entry of RULES; a rule that differs in a way no field says yet becomes a new field here,
read by the one handler it changes.
"""

from __future__ import annotations

from dataclasses import dataclass

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
XS_VERSIONS = tuple(RULES)

# `xenmux sim --xen-version`: the C xenstored each Xen release ships, as far as the rules
# above tell them apart (4.20's is 4.17's here: no GET_FEATURE, no depth, atoi domids).
# `--xs-version` overrides this choice of rules alone (docs/sim.md).
XENSTORED_OF_XEN = {"4.17": "4.17", "4.20": "4.17", "4.21": "4.21", "4.22": "4.22"}
XEN_VERSIONS = tuple(XENSTORED_OF_XEN)


def xenstored_version(xen_version: str, xs_version: str | None = None) -> str:
    """The xenstored rules a sim of `xen_version` runs: `xs_version` when given, else the C
    xenstored that release ships."""
    if xen_version not in XENSTORED_OF_XEN:
        raise ValueError(f"unknown Xen version {xen_version!r}: use one of {XEN_VERSIONS}")
    return xs_version or XENSTORED_OF_XEN[xen_version]


def rules_for(xs_version: str) -> Rules:
    rules = RULES.get(xs_version)
    if rules is None:
        raise ValueError(f"unknown xenstored version {xs_version!r}: use one of {XS_VERSIONS}")
    return rules
