"""Settings: TOML file, AWF_<SECTION>__<KEY> overrides, legacy workflow.cfg, and clear errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from abiquo_workflow.config import Settings, build_settings, load_settings, read_legacy_config
from abiquo_workflow.exceptions import ConfigError
from tests.cli_support import invoke

LEGACY_CFG = """\
[server]
bind_address = 0.0.0.0
bind_port = 9000
hostname = wf.example.com
port = 9000
default_action = CANCEL

[abiquo]
api_location = https://abiquo.example.com/api
api_username = admin
api_password = s3cret
api_approve_role = ENTERPRISE_ADMIN

[mail]
from = workflow@example.com
admin_subject = Approval needed
requester_subject = Your request
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_need_no_file() -> None:
    settings = build_settings({}, environ={})
    assert settings.server.bind == "127.0.0.1:8080"
    assert settings.database.url == "sqlite:///./abiquo-workflow.db"
    assert settings.policy.task_types == ("DEPLOY", "UNDEPLOY", "RECONFIGURE")
    assert settings.links.one_click is False


def test_the_toml_file_sets_values(tmp_path: Path) -> None:
    path = write(
        tmp_path, "c.toml", '[abiquo]\napi_url = "https://a.example.com/api"\n[mail]\nsmtp_port = 2525\n'
    )
    settings = load_settings(path, environ={}).settings
    assert settings.abiquo.base_url == "https://a.example.com/api"
    assert settings.mail.smtp_port == 2525


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", "[mail]\nsmtp_port = 2525\nsmtp_host = 'relay'\n")
    loaded = load_settings(path, environ={"AWF_MAIL__SMTP_PORT": "587"})
    assert loaded.settings.mail.smtp_port == 587
    assert loaded.settings.mail.smtp_host == "relay"
    assert loaded.sources == (str(path), "environment")


def test_list_keys_can_be_given_as_one_string() -> None:
    settings = build_settings({}, environ={"AWF_POLICY__TASK_TYPES": "deploy, reconfigure"})
    assert settings.policy.task_types == ("DEPLOY", "RECONFIGURE")


def test_variables_that_are_not_settings_are_ignored() -> None:
    settings = build_settings({}, environ={"AWF_TEST_POSTGRES_URL": "postgresql://x/y"})
    assert settings == Settings()


def test_every_problem_gets_a_line_naming_its_key() -> None:
    with pytest.raises(ConfigError) as error:
        build_settings(
            {"abiquo": {"timeout": "soon"}, "mail": {"smtp_hots": "x", "security": "ssl"}},
            environ={"AWF_SERVER__BIND": "nowhere"},
        )
    problems = error.value.problems
    assert len(problems) == 4
    assert any(p.startswith("abiquo.timeout: ") and "'soon'" in p for p in problems)
    assert "mail.smtp_hots: unknown key" in problems
    assert any(p.startswith("mail.security: ") for p in problems)
    assert any(p.startswith("server.bind: expected host:port") for p in problems)


def test_an_unknown_section_is_reported() -> None:
    with pytest.raises(ConfigError) as error:
        build_settings({"smtp": {"host": "x"}}, environ={})
    assert error.value.problems == ["smtp: unknown key"]


def test_a_bad_network_in_callback_allow_is_named() -> None:
    with pytest.raises(ConfigError) as error:
        build_settings({"server": {"callback_allow": ["10.0.0.0/8", "intranet"]}}, environ={})
    assert "server.callback_allow: 'intranet' is not an IP network" in error.value.problems[0]


def test_a_rejected_password_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as error:
        build_settings({"mail": {"smtp_password": 12345}}, environ={})
    assert "12345" not in str(error.value)


def test_secrets_never_appear_in_repr() -> None:
    settings = build_settings(
        {"server": {"secret_key": "sk-1"}},
        environ={
            "AWF_ABIQUO__PASSWORD": "pw-2",
            "AWF_MAIL__SMTP_PASSWORD": "pw-3",
            "AWF_SERVER__CALLBACK_TOKEN": "t-4",
        },
    )
    shown = repr(settings) + str(settings)
    for secret in ("sk-1", "pw-2", "pw-3", "t-4"):
        assert secret not in shown
    assert settings.abiquo.password.get_secret_value() == "pw-2"


def test_a_file_that_is_not_toml_is_one_clear_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", "[mail\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert error.value.problems[0].startswith(f"{path}: not valid TOML")


def test_a_missing_file_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_the_default_file_is_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "abiquo-workflow.toml", "[links]\nttl = 60\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}).settings.links.ttl == 60


def test_the_legacy_file_maps_to_our_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "workflow.cfg", LEGACY_CFG)
    settings = load_settings(legacy_file=path, environ={}).settings
    assert settings.server.bind == "0.0.0.0:9000"
    assert settings.server.base_url == "http://wf.example.com:9000"
    assert settings.policy.when_no_approver == "cancel"
    assert settings.abiquo.base_url == "https://abiquo.example.com/api"
    assert settings.abiquo.password.get_secret_value() == "s3cret"
    assert settings.policy.approver_role == "ENTERPRISE_ADMIN"
    assert settings.mail.sender == "workflow@example.com"
    assert settings.mail.approver_subject == "Approval needed"


def test_the_legacy_file_warns_which_toml_key_to_use(tmp_path: Path) -> None:
    path = write(tmp_path, "workflow.cfg", LEGACY_CFG)
    warnings = read_legacy_config(path).warnings
    assert f"{path}: [abiquo] api_location is deprecated; set abiquo.api_url in the TOML file" in warnings
    assert len(warnings) == 12


def test_the_toml_file_wins_over_the_legacy_file(tmp_path: Path) -> None:
    legacy = write(tmp_path, "workflow.cfg", LEGACY_CFG)
    toml = write(tmp_path, "c.toml", '[mail]\nsender = "new@example.com"\n')
    assert load_settings(toml, legacy, environ={}).settings.mail.sender == "new@example.com"


def test_unknown_legacy_keys_are_warned_about_and_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "workflow.cfg", "[mail]\nsmtp_server = old\n")
    legacy = read_legacy_config(path)
    assert legacy.values == {}
    assert legacy.warnings == [f"{path}: [mail] smtp_server is not used by abiquo-workflow; ignored"]


def test_a_broken_legacy_file_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "workflow.cfg", "no section header\n")
    with pytest.raises(ConfigError, match="cannot read legacy config"):
        read_legacy_config(path)


# --- [[policy.rules]] ------------------------------------------------------------------------------------

RULES_TOML = """\
[policy]
approver_role = "ENTERPRISE_ADMIN"

[[policy.rules]]
name = "small"
max_vms = 2
max_cpu = 4
max_ram = "8GB"
max_disk = "1.5 TB"
decide = "accept"

[[policy.rules]]
name = "production"
enterprise = ["Acme & Söhne <Ltd>", 7]
datacenter = 1
task_types = "deploy, reconfigure"
requester_role = "USER"
approver_roles = ["ENTERPRISE_ADMIN", "VDC_APPROVER"]
approvers = ["Carla Finance <cfo@finance.example>"]
when_requester_is_approver = "cancel"
"""


def problems_of(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as error:
        build_settings(data, environ={})
    return error.value.problems


def test_rules_are_read_in_order_from_the_toml_file(tmp_path: Path) -> None:
    policy = load_settings(write(tmp_path, "c.toml", RULES_TOML), environ={}).settings.policy

    small, production = policy.rules
    assert (small.name, small.max_vms, small.max_cpu, small.max_ram, small.max_disk, small.decide) == (
        "small",
        2,
        4,
        8192,
        1536 * 1024,
        "accept",
    )
    assert production.enterprise == ("Acme & Söhne <Ltd>", "7")
    assert (production.datacenter, production.task_types, production.requester_role) == (
        ("1",),
        ("DEPLOY", "RECONFIGURE"),
        ("USER",),
    )
    assert production.approver_roles == ("ENTERPRISE_ADMIN", "VDC_APPROVER")
    assert production.approvers == ("Carla Finance <cfo@finance.example>",)
    assert (production.when_requester_is_approver, production.when_no_approver) == ("cancel", None)
    assert policy.rule_named("production") is production and policy.rule_named("gone") is None


@pytest.mark.parametrize(
    ("given", "megabytes"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("4GB", 4096),
        ("4 gb", 4096),
        ("1.5GiB", 1536),
        ("512MB", 512),
        ("2T", 2097152),
    ],
)
def test_sizes_are_megabytes_or_a_number_with_its_unit(given: object, megabytes: int) -> None:
    settings = build_settings(
        {"policy": {"rules": [{"name": "r", "max_ram": given, "decide": "accept"}]}}, environ={}
    )
    assert settings.policy.rules[0].max_ram == megabytes


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"max_vms": "three"}, "policy.rules[0] ('r').max_vms: Input should be a valid integer"),
        ({"max_vms": 0}, "policy.rules[0] ('r').max_vms: Input should be greater than or equal to 1"),
        ({"max_ram": "4 gigs"}, "policy.rules[0] ('r').max_ram: expected megabytes (4096) or a size"),
        ({"max_disk": True}, "policy.rules[0] ('r').max_disk: expected a size in megabytes"),
        ({"enterprise": []}, "policy.rules[0] ('r').enterprise: an empty list matches nothing"),
        (
            {"task_types": ["DEPLOYY"]},
            "policy.rules[0] ('r').task_types: DEPLOYY is not a task type Abiquo holds",
        ),
        ({"approvers": ["alice"]}, "policy.rules[0] ('r').approvers: 'alice' is not an email address"),
        ({"approvers": "a@x.example, b@x.example"}, "policy.rules[0] ('r').approvers: 'a@x.example, b@x"),
        ({"decide": "maybe"}, "policy.rules[0] ('r').decide: Input should be 'accept' or 'cancel'"),
        (
            {"when_requester_is_approver": "x"},
            "policy.rules[0] ('r').when_requester_is_approver: Input should",
        ),
        ({"colour": "red"}, "policy.rules[0] ('r').colour: unknown key"),
        (
            {"decide": "accept", "approvers": ["a@x.example"], "when_no_approver": "accept"},
            "policy.rules[0] ('r'): decide = 'accept' decides without asking anyone, so approvers and "
            "when_no_approver would do nothing",
        ),
        ({"vms": 1, "max_vms": 2}, "policy.rules[0] ('r'): vms is an exact number"),
        ({"min_vms": 3, "max_vms": 2}, "policy.rules[0] ('r'): min_vms 3 is more than max_vms 2"),
        (
            {"approver_roles": []},
            "policy.rules[0] ('r'): approver_roles = [] and no approvers: the rule asks nobody",
        ),
    ],
)
def test_a_bad_rule_is_refused_naming_the_rule_and_the_key(rule: dict[str, object], problem: str) -> None:
    [line] = problems_of({"policy": {"rules": [{"name": "r", **rule}]}})
    assert line.startswith(problem), line


def test_a_rule_needs_a_name_of_its_own() -> None:
    assert problems_of({"policy": {"rules": [{"decide": "accept"}]}}) == [
        "policy.rules[0].name: Field required"
    ]
    assert problems_of({"policy": {"rules": [{"name": "  ", "decide": "accept"}]}}) == [
        "policy.rules[0].name: a rule's name cannot be blank (got '  ')"
    ]
    [twice] = problems_of(
        {
            "policy": {
                "rules": [{"name": "Small", "max_vms": 1}, {"name": "x", "max_vms": 2}, {"name": "small"}]
            }
        }
    )
    assert twice.startswith("policy.rules[0] and policy.rules[2] are both named 'small'")


def test_a_rule_that_could_never_apply_is_refused() -> None:
    [after_all] = problems_of(
        {"policy": {"rules": [{"name": "all", "decide": "cancel"}, {"name": "x", "max_vms": 1}]}}
    )
    assert after_all == (
        "policy.rules[1] ('x') comes after policy.rules[0] ('all'), which matches every request, so it "
        "never applies"
    )
    [ungated] = problems_of(
        {"policy": {"task_types": ["DEPLOY"], "rules": [{"name": "u", "task_types": "UNDEPLOY"}]}}
    )
    assert ungated.startswith("policy.rules[0] ('u').task_types: UNDEPLOY is not in policy.task_types")


def test_quorum_deadline_reminders_and_escalation_are_read_with_the_default_rule_filling_in() -> None:
    policy = build_settings(
        {
            "policy": {
                "deadline": "3d",
                "reminders": ["2d", "1d"],
                "rules": [
                    {"name": "production", "enterprise": 2, "approvals_needed": 2, "at_deadline": "accept"},
                    {"name": "rest", "escalate_after": "12h", "escalate_to": "Boss <boss@acme.example>"},
                ],
            }
        },
        environ={},
    ).policy
    production, rest = (policy.timing(rule) for rule in policy.rules)
    assert (production.approvals_needed, production.deadline, production.at_deadline) == (
        2,
        3 * 86400,
        "accept",
    )
    assert production.reminders == (86400, 2 * 86400)  # in order, whatever order they were written in
    assert (rest.approvals_needed, rest.at_deadline, rest.escalate_after) == (1, "cancel", 12 * 3600)
    assert rest.escalate_to == ("Boss <boss@acme.example>",)
    assert policy.timing(None).deadline == 3 * 86400


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (
            {"approver_roles": [], "approvers": ["a@x.example", "b@x.example"], "approvals_needed": 3},
            "policy.rules[0] ('production').approvals_needed: 3 approvals are needed, but the rule names",
        ),
        ({"deadline": "3 days"}, "policy.rules[0] ('production').deadline: '3 days' is not a duration"),
        ({"at_deadline": "accept"}, "policy.rules[0] ('production').at_deadline: there is no deadline"),
        (
            {"deadline": "1d", "reminders": ["1d"]},
            "policy.rules[0] ('production').reminders: 1d is not before the deadline (1d)",
        ),
        (
            {"deadline": "1d", "escalate_after": "2d", "escalate_to": ["x@y.example"]},
            "policy.rules[0] ('production').escalate_after: 2d is not before the deadline (1d)",
        ),
        (
            {"escalate_to": ["x@y.example"]},
            "policy.rules[0] ('production').escalate_after: escalate_to is set",
        ),
        ({"escalate_after": "1h"}, "policy.rules[0] ('production').escalate_to: escalate_after is set"),
        (
            {"escalate_after": "1h", "escalate_to": "nobody"},
            "policy.rules[0] ('production').escalate_to: 'nobody'",
        ),
        ({"decide": "accept", "deadline": "1d"}, "policy.rules[0] ('production'): decide = 'accept' decides"),
    ],
)
def test_a_rule_whose_quorum_or_timing_cannot_work_is_refused_naming_the_rule_and_key(
    rule: dict[str, object], problem: str
) -> None:
    [found] = problems_of({"policy": {"rules": [{"name": "production", "enterprise": 2, **rule}]}})
    assert found.startswith(problem), found


def test_links_shorter_than_a_deadline_are_refused_naming_the_rule_and_both_keys() -> None:
    [found] = problems_of(
        {"links": {"ttl": 3600}, "policy": {"rules": [{"name": "production", "deadline": "3d"}]}}
    )
    assert found.startswith(
        "links.ttl: 3600 seconds is shorter than policy.rules[0] ('production').deadline (3d)"
    ), found
    assert build_settings({"links": {"ttl": 3 * 86400}, "policy": {"deadline": "3d"}}, environ={})


def test_every_bad_rule_gets_its_own_line() -> None:
    problems = problems_of(
        {
            "policy": {
                "rules": [{"name": "a", "deadline": "1 day"}, {"name": "b", "max_cpu": "x"}, {"max_vms": 1}]
            }
        }
    )
    assert [p.split(":")[0] for p in problems] == [
        "policy.rules[0] ('a').deadline",
        "policy.rules[1] ('b').max_cpu",
        "policy.rules[2].name",
    ]


@pytest.mark.parametrize("command", ["check", "serve"])
def test_check_and_serve_stop_at_start_on_a_bad_rule_naming_it(tmp_path: Path, command: str) -> None:
    config = write(
        tmp_path, "c.toml", '[[policy.rules]]\nname = "production"\ndeadline = "3 days"\nmax_vms = -1\n'
    )

    result = invoke("--config", str(config), command)

    assert result.exit_code == 2
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    assert lines[0] == "abiquo-workflow: invalid configuration:"
    assert len(lines) == 3
    assert any(
        line.startswith("policy.rules[0] ('production').deadline: '3 days' is not a duration")
        for line in lines
    )
    assert any(
        line.startswith("policy.rules[0] ('production').max_vms: Input should be greater") for line in lines
    )
    assert "Traceback" not in result.output


# --- reconcile.interval -------------------------------------------------------------------------------


def test_reconciliation_runs_every_five_minutes_by_default() -> None:
    assert build_settings({}, environ={}).reconcile.interval == timedelta(minutes=5)


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("1h30m", 5400),
        ("1d12h", 129_600),
        ("0", 0),
        (300, 300),
        (0, 0),
        ("300", 300),
    ],
)
def test_the_reconcile_interval_is_a_duration_or_whole_seconds(given: object, seconds: int) -> None:
    settings = build_settings({"reconcile": {"interval": given}}, environ={})

    assert settings.reconcile.interval == timedelta(seconds=seconds)


def test_the_reconcile_interval_can_come_from_the_environment() -> None:
    settings = build_settings({}, environ={"AWF_RECONCILE__INTERVAL": "90s"})

    assert settings.reconcile.interval == timedelta(seconds=90)


@pytest.mark.parametrize("given", ["5 minutes", "-5m", -1, "m5", ""])
def test_a_bad_reconcile_interval_is_one_line_naming_the_key(given: object) -> None:
    with pytest.raises(ConfigError) as refused:
        build_settings({"reconcile": {"interval": given}}, environ={})

    [problem] = refused.value.problems
    assert problem.startswith("reconcile.interval: ")
