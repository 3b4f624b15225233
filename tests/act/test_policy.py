"""The policy file: precedence, matching, and one clear error naming file and key path."""

from __future__ import annotations

import pytest

from mux.act.policy import (
    ACTIONS,
    PolicyError,
    base_name,
    command_argv,
    load_policy,
    migrating_in,
    parse_policy,
)
from mux.act.xl import XlToolstack

UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def test_no_file_means_the_domains_own_settings_then_xls_defaults():
    plan = load_policy(None).plan("web", UUID)
    assert plan.action("poweroff", {}) == "destroy"
    assert plan.action("reboot", {}) == "restart"
    assert plan.action("watchdog", {}) == "destroy"
    assert plan.action("crash", {}) == "destroy"
    assert plan.action("soft_reset", {}) == "soft-reset"
    assert plan.action("crash", {"on_crash": "preserve"}) == "preserve"
    assert plan.config() == "/etc/xen/{name}.cfg"


def test_rules_override_the_domain_defaults_only_fill_in():
    policy = parse_policy(
        f"""
        [defaults]
        on_crash = "coredump-destroy"
        on_reboot = "destroy"
        [[rule]]
        name = "web-*"
        on_crash = "preserve"
        [[rule]]
        uuid = "{UUID.upper()}"
        exclude = true
        """,
        "p.toml",
    )
    web = policy.plan("web-1", None)
    assert web.action("crash", {"on_crash": "restart"}) == "preserve"
    other = policy.plan("db", None)
    assert other.action("crash", {}) == "coredump-destroy"
    assert other.action("crash", {"on_crash": "restart"}) == "restart"
    assert other.action("reboot", {}) == "destroy"
    assert policy.plan("db", UUID).excluded
    # names match without xl's migration suffixes
    assert policy.plan("web-1--migratedaway", None).rule is not None
    assert base_name("web--incoming") == "web" and migrating_in("web--incoming")
    assert not migrating_in("web")


def test_hooks_split_before_substitution_so_a_name_is_one_argument():
    policy = parse_policy('[defaults]\non_death = "tidy --dom {domid} {name}"', "p.toml")
    [hook] = policy.plan("x", None).hooks("on_death")
    assert command_argv(hook, {"domid": 7, "name": "a b; rm"}) == ["tidy", "--dom", "7", "a b; rm"]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[defaults]\non_crash = "explode"',
            "p.toml: defaults.on_crash: 'explode' is not an action",
        ),
        ('[[rule]]\nname = "a"\non_reboot = 3', "p.toml: rule[0].on_reboot: 3 is not an action"),
        ('[[rule]]\non_reboot = "destroy"', "p.toml: rule[0]: needs exactly one of name"),
        ('[[rule]]\nuuid = "nope"', "p.toml: rule[0].uuid: 'nope' is not a UUID"),
        ('[[rule]]\nname = "a"\nexclude = "yes"', "p.toml: rule[0].exclude: must be true or false"),
        (
            '[defaults]\non_death = ["x {domain}"]',
            "p.toml: defaults.on_death[0]: unknown substitution {domain}",
        ),
        (
            "[defaults]\nrestart_limit = -1",
            "p.toml: defaults.restart_limit: must be an integer >= 0",
        ),
        ("[defaults]\nfoo = 1", "p.toml: defaults.foo: unknown key"),
        ("[weird]\n", "p.toml: weird: unknown key"),
        ("[defaults\non_crash = 1", "p.toml: not valid TOML: "),
        ('[commands]\ndestroy = ""', "p.toml: commands.destroy: must be a non-empty string"),
    ],
)
def test_errors_name_the_file_and_the_key_path(text, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml")
    assert str(info.value).startswith(message), str(info.value)


def test_a_syntax_error_gives_the_line(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[defaults]\non_crash = "destroy"\non_reboot = = "x"\n')
    with pytest.raises(PolicyError, match=r"p\.toml: not valid TOML: .*line 3"):
        load_policy(str(path))


def test_xl_refuses_actions_it_has_no_command_for_unless_the_policy_names_one(tmp_path):
    supported = XlToolstack({}).supported
    assert set(ACTIONS) - supported == {"rename-restart", "soft-reset"}
    path = tmp_path / "p.toml"
    path.write_text('[[rule]]\nname = "a*"\non_reboot = "rename-restart"\n')
    with pytest.raises(PolicyError) as info:
        load_policy(str(path), supported)
    assert str(info.value) == (
        f"{path}: rename-restart has no command of this toolstack: name one in [commands] "
        '(rename-restart = "...") or choose another action'
    )
    path.write_text(
        '[commands]\nrename-restart = "/sbin/rr {domid}"\n'
        '[[rule]]\nname = "a*"\non_reboot = "rename-restart"\n'
    )
    assert load_policy(str(path), supported).commands["rename-restart"] == "/sbin/rr {domid}"
