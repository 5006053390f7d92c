"""Settings: TOML file, AWF_<SECTION>__<KEY> overrides, legacy workflow.cfg, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from abiquo_workflow.config import Settings, build_settings, load_settings, read_legacy_config
from abiquo_workflow.exceptions import ConfigError

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
