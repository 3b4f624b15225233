"""The act policy: which action each shutdown gets, which hooks run, which domains are left alone.

A TOML file (docs/act.md has the full reference):

    [defaults]                       # where a domain has no setting of its own
    on_crash = "preserve"
    config = "/etc/xen/{name}.cfg"   # what `restart` creates the domain from (xl)
    dump = "/var/lib/xen/dump/{name}"
    on_death = ["/usr/lib/xen/bin/tidy-qemu {domid}"]

    [commands]                       # actions xl has no command for
    rename-restart = "/usr/local/sbin/rename-restart {domid} {name}"

    [[rule]]                         # the first rule that matches applies, over the domain's own
    name = "web-*"                   # settings; a name glob, or `uuid = "..."`
    on_reboot = "destroy"

    [[rule]]
    uuid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    exclude = true                   # another toolstack owns it

Which action applies to a shutdown, first found: the first matching rule, the domain's own
setting (as its toolstack stored it), `[defaults]`, xl's default. Names are matched without
xl's migration suffixes; a domain named `NAME--incoming` is being migrated in and is never
acted upon.

Every error names the file and the key path (`rule[2].on_crash`), with the line for a TOML
syntax error, and is raised before anything runs.
"""

from __future__ import annotations

import fnmatch
import shlex
import string
import tomllib
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

ACTIONS = (
    "destroy",
    "restart",
    "rename-restart",
    "preserve",
    "coredump-destroy",
    "coredump-restart",
    "soft-reset",
)
# shutdown reason -> the policy key that names its action (xl.cfg(5))
REASON_KEYS = {
    "poweroff": "on_poweroff",
    "reboot": "on_reboot",
    "watchdog": "on_watchdog",
    "crash": "on_crash",
    "soft_reset": "on_soft_reset",
}
XL_DEFAULTS = {
    "on_poweroff": "destroy",
    "on_reboot": "restart",
    "on_watchdog": "destroy",
    "on_crash": "destroy",
    "on_soft_reset": "soft-reset",
}
HOOKS = ("on_shutdown", "on_death")  # lists of commands, run with the domain's fields
FIELDS = frozenset({"domid", "uuid", "name", "reason"})
RESTARTS = frozenset({"restart", "rename-restart", "coredump-restart", "soft-reset"})

DEFAULT_CONFIG = "/etc/xen/{name}.cfg"
DEFAULT_DUMP = "/var/lib/xen/dump/{name}"
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0

INCOMING = "--incoming"
SUFFIXES = (INCOMING, "--migratedaway")

_ACTION_KEYS = frozenset(REASON_KEYS.values())
_TEMPLATE_KEYS = frozenset({"config", "dump"})
_DEFAULT_KEYS = _ACTION_KEYS | _TEMPLATE_KEYS | set(HOOKS) | {"restart_limit", "restart_window"}
_RULE_KEYS = _ACTION_KEYS | _TEMPLATE_KEYS | set(HOOKS) | {"name", "uuid", "exclude"}
_TOP_KEYS = frozenset({"defaults", "commands", "rule"})


class PolicyError(ValueError):
    """A policy that cannot be used; `str()` is the one line to show."""


def base_name(name: str | None) -> str:
    """The name without xl's migration suffix (`web--incoming` -> `web`)."""
    name = name or ""
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def migrating_in(name: str | None) -> bool:
    return bool(name) and name.endswith(INCOMING)


def _fields_of(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def expand(template: str, values: Mapping[str, object]) -> str:
    """`template` with {domid} {uuid} {name} {reason} filled in (checked at load)."""
    return template.format_map({k: "" if v is None else v for k, v in values.items()})


def command_argv(template: str, values: Mapping[str, object]) -> list[str]:
    """A hook or command line: split first (as a shell would, without one), then each
    argument filled in, so that a name cannot inject arguments."""
    return [expand(arg, values) for arg in shlex.split(template)]


@dataclass(frozen=True)
class Settings:
    """One level of settings (defaults, or one rule): only the keys it names."""

    actions: Mapping[str, str] = field(default_factory=dict)  # on_* -> action
    hooks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    config: str | None = None
    dump: str | None = None


@dataclass(frozen=True)
class Rule:
    where: str  # "rule[2]", for messages
    name: str | None
    uuid: str | None
    exclude: bool
    settings: Settings

    def matches(self, name: str | None, uuid: str | None) -> bool:
        if self.uuid is not None:
            return (uuid or "").lower() == self.uuid
        return self.name is not None and fnmatch.fnmatchcase(base_name(name), self.name)


@dataclass(frozen=True)
class Plan:
    """What the policy says for one domain."""

    excluded: bool
    rule: Rule | None
    defaults: Settings
    commands: Mapping[str, str]

    def action(self, reason: str, own: Mapping[str, str]) -> str:
        """The action for a shutdown `reason`, `own` being the domain's own on_* settings."""
        key = REASON_KEYS.get(reason)
        if key is None:  # an unknown code: xl destroys the domain
            return "destroy"
        if self.rule is not None and key in self.rule.settings.actions:
            return self.rule.settings.actions[key]
        if own.get(key) in ACTIONS:
            return own[key]
        return self.defaults.actions.get(key, XL_DEFAULTS[key])

    def hooks(self, which: str) -> tuple[str, ...]:
        if self.rule is not None and which in self.rule.settings.hooks:
            return tuple(self.rule.settings.hooks[which])
        return tuple(self.defaults.hooks.get(which, ()))

    def config(self) -> str:
        return (self.rule and self.rule.settings.config) or self.defaults.config or DEFAULT_CONFIG

    def dump(self) -> str:
        return (self.rule and self.rule.settings.dump) or self.defaults.dump or DEFAULT_DUMP


@dataclass(frozen=True)
class Policy:
    source: str  # the file, or "(no policy file)"
    defaults: Settings = Settings()
    rules: tuple[Rule, ...] = ()
    commands: Mapping[str, str] = field(default_factory=dict)
    restart_limit: int = RESTART_LIMIT
    restart_window: float = RESTART_WINDOW

    def plan(self, name: str | None, uuid: str | None) -> Plan:
        for rule in self.rules:
            if rule.matches(name, uuid):
                return Plan(rule.exclude, rule, self.defaults, self.commands)
        return Plan(False, None, self.defaults, self.commands)

    def actions_named(self) -> set[str]:
        named = set(self.defaults.actions.values())
        for rule in self.rules:
            named |= set(rule.settings.actions.values())
        return named


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> PolicyError:
        return PolicyError(f"{self.source}: {where}: {message}")

    def table(self, value: object, where: str, allowed: Iterable[str]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table, not {type(value).__name__}")
        allowed = frozenset(allowed)
        for key in value:
            if key not in allowed:
                raise self.fail(
                    f"{where}.{key}" if where else key,
                    f"unknown key (known: {', '.join(sorted(allowed))})",
                )
        return value

    def template(self, value: object, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, "must be a non-empty string")
        try:
            unknown = _fields_of(value) - FIELDS
        except ValueError as exc:
            raise self.fail(where, f"bad {{...}} substitution: {exc}") from None
        if unknown:
            raise self.fail(
                where,
                f"unknown substitution {{{sorted(unknown)[0]}}} "
                f"(known: {', '.join('{' + f + '}' for f in sorted(FIELDS))})",
            )
        return value

    def command(self, value: object, where: str) -> str:
        text = self.template(value, where)
        try:
            if not shlex.split(text):
                raise self.fail(where, "names no command")
        except ValueError as exc:
            raise self.fail(where, f"cannot be split into arguments: {exc}") from None
        return text

    def settings(self, table: dict, where: str) -> Settings:
        actions = {}
        hooks = {}
        for key in _ACTION_KEYS & table.keys():
            value = table[key]
            if value not in ACTIONS:
                raise self.fail(
                    f"{where}.{key}", f"{value!r} is not an action (one of {', '.join(ACTIONS)})"
                )
            actions[key] = value
        for key in set(HOOKS) & table.keys():
            value = table[key]
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list):
                raise self.fail(f"{where}.{key}", "must be a command or a list of commands")
            hooks[key] = tuple(
                self.command(cmd, f"{where}.{key}[{i}]") for i, cmd in enumerate(value)
            )
        config = table.get("config")
        dump = table.get("dump")
        return Settings(
            actions=actions,
            hooks=hooks,
            config=None if config is None else self.template(config, f"{where}.config"),
            dump=None if dump is None else self.template(dump, f"{where}.dump"),
        )

    def rule(self, value: object, index: int) -> Rule:
        where = f"rule[{index}]"
        table = self.table(value, where, _RULE_KEYS)
        name = table.get("name")
        uuid = table.get("uuid")
        if (name is None) == (uuid is None):
            raise self.fail(where, "needs exactly one of name (a glob) or uuid")
        if name is not None and (not isinstance(name, str) or not name):
            raise self.fail(f"{where}.name", "must be a non-empty glob")
        if uuid is not None:
            try:
                uuid = str(uuidlib.UUID(str(uuid)))
            except ValueError:
                raise self.fail(f"{where}.uuid", f"{uuid!r} is not a UUID") from None
        exclude = table.get("exclude", False)
        if not isinstance(exclude, bool):
            raise self.fail(f"{where}.exclude", "must be true or false")
        return Rule(where, name, uuid, exclude, self.settings(table, where))


def parse_policy(text: str, source: str) -> Policy:
    """A policy from TOML text; raises PolicyError."""
    reader = _Reader(source)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    reader.table(doc, "", _TOP_KEYS)
    defaults_table = reader.table(doc.get("defaults", {}), "defaults", _DEFAULT_KEYS)
    defaults = reader.settings(defaults_table, "defaults")
    limit = defaults_table.get("restart_limit", RESTART_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise reader.fail("defaults.restart_limit", "must be an integer >= 0")
    window = defaults_table.get("restart_window", RESTART_WINDOW)
    if isinstance(window, bool) or not isinstance(window, (int, float)) or window <= 0:
        raise reader.fail("defaults.restart_window", "must be a number of seconds > 0")
    commands_table = reader.table(doc.get("commands", {}), "commands", ACTIONS)
    commands = {
        key: reader.command(value, f"commands.{key}") for key, value in commands_table.items()
    }
    rules = doc.get("rule", [])
    if not isinstance(rules, list):
        raise reader.fail("rule", "must be an array of tables ([[rule]])")
    return Policy(
        source=source,
        defaults=defaults,
        rules=tuple(reader.rule(r, i) for i, r in enumerate(rules)),
        commands=commands,
        restart_limit=limit,
        restart_window=float(window),
    )


def load_policy(path: str | None, supported: Iterable[str] = ACTIONS) -> Policy:
    """The policy in `path` (None: no file, each domain's own settings and xl's defaults),
    checked against what the toolstack can do without a command. Raises PolicyError."""
    if path is None:
        policy = Policy(source="(no policy file)")
    else:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read the policy: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{path}: not UTF-8 text: {exc}") from None
        policy = parse_policy(text, path)
    check_supported(policy, supported)
    return policy


def check_supported(policy: Policy, supported: Iterable[str]) -> None:
    missing = sorted(policy.actions_named() - set(supported) - set(policy.commands))
    if missing:
        raise PolicyError(
            f"{policy.source}: {missing[0]} has no command of this toolstack: name one in "
            f'[commands] ({missing[0]} = "...") or choose another action'
        )
