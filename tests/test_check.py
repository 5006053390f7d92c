"""`abiquo-workflow check`: one line per dependency, OK or FAIL with the reason, exit 1 on any FAIL,
and never a secret in the output. Run in-process against the simulator, an SMTP inbox and a database."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import stamina

from abiquo_simulator.faults import parse_fault
from abiquo_workflow.mail.inbox import Inbox
from abiquo_workflow.simulation import SimulatorServer
from tests.cli_support import free_port, invoke, write_toml

ABIQUO_PASSWORD = "xabiquo"
WRONG_ABIQUO_PASSWORD = "not-the-abiquo-password-0451"
SMTP_PASSWORD = "right-smtp-password-3172"
WRONG_SMTP_PASSWORD = "wrong-smtp-password-8619"
SECRET_KEY = "check-test-secret-key-5550-not-for-production"

Config = Callable[..., Path]


@pytest.fixture(autouse=True)
def _no_retry_sleeps() -> Iterator[None]:
    stamina.set_testing(True, attempts=1)
    yield
    stamina.set_testing(False)


@pytest.fixture
def check_config(tmp_path: Path, simulator: SimulatorServer, smtp_inbox: Inbox) -> Config:
    """Write a TOML file wired to the simulator, the inbox and SQLite in tmp_path; keyword arguments are
    sections whose keys override the defaults (None removes a key)."""

    def write(**overrides: Mapping[str, Any]) -> Path:
        sections: dict[str, dict[str, Any]] = {
            "server": {"bind": "127.0.0.1:8080", "secret_key": SECRET_KEY},
            "database": {"url": f"sqlite:///{tmp_path / 'check.db'}"},
            "abiquo": {"api_url": simulator.api_url, "password": ABIQUO_PASSWORD, "retries": 0},
            "mail": {"smtp_host": "127.0.0.1", "smtp_port": smtp_inbox.port, "timeout": 5},
        }
        for section, keys in overrides.items():
            for key, value in keys.items():
                if value is None:
                    sections.setdefault(section, {}).pop(key, None)
                else:
                    sections.setdefault(section, {})[key] = value
        return write_toml(tmp_path / "abiquo-workflow.toml", sections)

    return write


def check_lines(stdout: str) -> dict[str, str]:
    """`name  OK|FAIL  detail` lines by name."""
    lines = {}
    for line in stdout.splitlines():
        name, _, rest = line.partition(" ")
        lines[name] = rest.strip()
    return lines


def test_check_passes_with_one_ok_line_per_dependency(check_config: Config) -> None:
    result = invoke("--config", str(check_config()), "check")

    assert result.exit_code == 0, result.output
    lines = check_lines(result.stdout)
    assert list(lines) == ["config", "database", "abiquo", "smtp"]
    assert all(detail.startswith("OK") for detail in lines.values()), result.stdout
    assert "role ENTERPRISE_ADMIN exists" in lines["abiquo"]
    assert "; reconciliation reads pending tasks (" in lines["abiquo"]


def test_pending_tasks_abiquo_refuses_to_list_fail_the_abiquo_check_naming_reconciliation(
    check_config: Config, simulator: SimulatorServer
) -> None:
    simulator.simulator.add_fault(
        parse_fault({"status": 403, "count": 1000, "match": "/action/pendingtasks"})
    )

    result = invoke("--config", str(check_config()), "check")

    assert result.exit_code == 1
    abiquo = check_lines(result.stdout)["abiquo"]
    assert abiquo.startswith("FAIL") and "reconciliation cannot read the enterprises' pending tasks" in abiquo
    assert "reconcile.interval = 0" in abiquo


def test_with_reconciliation_off_the_check_reads_no_pending_tasks(
    check_config: Config, simulator: SimulatorServer
) -> None:
    result = invoke("--config", str(check_config(reconcile={"interval": "0"})), "check")

    assert result.exit_code == 0, result.output
    assert "reconciliation" not in check_lines(result.stdout)["abiquo"]
    assert not [c for c in simulator.simulator.api_calls() if c.path.endswith("/pendingtasks")]


def test_check_reports_a_migrated_sqlite_database_as_up_to_date(check_config: Config) -> None:
    config = str(check_config())
    assert invoke("--config", config, "migrate").exit_code == 0

    result = invoke("--config", config, "check")

    assert result.exit_code == 0, result.output
    assert check_lines(result.stdout)["database"].startswith("OK")
    assert "schema is up to date" in check_lines(result.stdout)["database"]


def test_wrong_abiquo_password_fails_the_abiquo_check_with_401(check_config: Config) -> None:
    config = check_config(abiquo={"password": WRONG_ABIQUO_PASSWORD})

    result = invoke("--config", str(config), "check")

    assert result.exit_code == 1
    abiquo = check_lines(result.stdout)["abiquo"]
    assert abiquo.startswith("FAIL") and "401" in abiquo, abiquo
    assert WRONG_ABIQUO_PASSWORD not in result.output


def test_unreachable_abiquo_fails_the_abiquo_check(check_config: Config) -> None:
    closed_port = free_port()
    config = check_config(abiquo={"api_url": f"http://127.0.0.1:{closed_port}/api"})

    result = invoke("--config", str(config), "check")

    assert result.exit_code == 1
    abiquo = check_lines(result.stdout)["abiquo"]
    assert abiquo.startswith("FAIL") and "could not be reached" in abiquo, abiquo
    assert ABIQUO_PASSWORD not in result.output


def test_an_approver_role_abiquo_lacks_fails_the_abiquo_check_naming_the_key(check_config: Config) -> None:
    config = check_config(policy={"approver_role": "NOPE"})

    result = invoke("--config", str(config), "check")

    assert result.exit_code == 1
    abiquo = check_lines(result.stdout)["abiquo"]
    assert abiquo.startswith("FAIL"), abiquo
    assert "no role named NOPE" in abiquo and "policy.approver_role" in abiquo


def test_a_role_a_policy_rule_names_must_exist_in_abiquo(check_config: Config) -> None:
    config = check_config()
    with config.open("a", encoding="utf-8") as toml:
        toml.write(
            '\n[[policy.rules]]\nname = "vdc"\nrequester_role = "USER"\napprover_roles = ["VDC_APPROVER"]\n'
        )
    assert (
        "role ENTERPRISE_ADMIN exists (and the 2 other role(s) the policy rules name);"
        in check_lines(invoke("--config", str(config), "check").stdout)["abiquo"]
    )
    with config.open("a", encoding="utf-8") as toml:
        toml.write('\n[[policy.rules]]\nname = "typo"\napprover_roles = ["VDC_APROVER"]\n')

    result = invoke("--config", str(config), "check")

    assert result.exit_code == 1
    abiquo = check_lines(result.stdout)["abiquo"]
    assert abiquo.startswith("FAIL"), abiquo
    assert "no role named VDC_APROVER (policy.rules[1] ('typo').approver_roles)" in abiquo


def test_an_unreachable_smtp_relay_fails_the_smtp_check(check_config: Config) -> None:
    closed_port = free_port()
    config = check_config(mail={"smtp_port": closed_port})

    result = invoke("--config", str(config), "check")

    assert result.exit_code == 1
    smtp = check_lines(result.stdout)["smtp"]
    assert smtp.startswith("FAIL") and f"127.0.0.1:{closed_port}" in smtp, smtp
    assert "could not connect" in smtp


def test_a_refused_smtp_login_fails_the_smtp_check_without_showing_the_password(
    tmp_path: Path, check_config: Config
) -> None:
    with Inbox(auth=("relay-user", SMTP_PASSWORD)) as relay:
        config = check_config(
            mail={"smtp_port": relay.port, "smtp_user": "relay-user", "smtp_password": WRONG_SMTP_PASSWORD}
        )
        result = invoke("--config", str(config), "check")

    assert result.exit_code == 1
    smtp = check_lines(result.stdout)["smtp"]
    assert smtp.startswith("FAIL") and "refused the login for user 'relay-user'" in smtp, smtp
    assert WRONG_SMTP_PASSWORD not in result.output
    assert SMTP_PASSWORD not in result.output


def test_the_right_smtp_login_passes_the_smtp_check(check_config: Config) -> None:
    with Inbox(auth=("relay-user", SMTP_PASSWORD)) as relay:
        config = check_config(
            mail={"smtp_port": relay.port, "smtp_user": "relay-user", "smtp_password": SMTP_PASSWORD}
        )
        result = invoke("--config", str(config), "check")

    assert result.exit_code == 0, result.output
    assert "accepts the login" in check_lines(result.stdout)["smtp"]
    assert SMTP_PASSWORD not in result.output


def test_a_missing_secret_key_fails_the_config_check_naming_the_key(check_config: Config) -> None:
    config = check_config(server={"secret_key": None})

    result = invoke("--config", str(config), "check")

    assert result.exit_code == 1
    line = check_lines(result.stdout)["config"]
    assert line.startswith("FAIL") and "server.secret_key" in line, line


def test_a_short_secret_key_fails_the_config_check_saying_how_to_make_one(check_config: Config) -> None:
    config = check_config(server={"secret_key": "a"})

    result = invoke("--config", str(config), "check")

    assert result.exit_code == 1
    line = check_lines(result.stdout)["config"]
    assert line.startswith("FAIL") and "too short" in line and "token_urlsafe" in line, line


def test_secrets_never_appear_in_the_check_output(check_config: Config) -> None:
    result = invoke("--config", str(check_config()), "check")

    assert result.exit_code == 0, result.output
    for secret in (SECRET_KEY, ABIQUO_PASSWORD):
        assert secret not in result.output


def test_a_missing_sqlite_folder_fails_the_database_check(tmp_path: Path, check_config: Config) -> None:
    config = check_config(database={"url": f"sqlite:///{tmp_path / 'nowhere' / 'check.db'}"})

    result = invoke("--config", str(config), "check")

    assert result.exit_code == 1
    database = check_lines(result.stdout)["database"]
    assert database.startswith("FAIL") and "does not exist" in database, database


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_an_unmigrated_postgresql_database_fails_until_migrate_is_run(
    database_url: str, check_config: Config
) -> None:
    config = str(check_config(database={"url": database_url}))

    before = invoke("--config", config, "check")
    migrated = invoke("--config", config, "migrate")
    after = invoke("--config", config, "check")

    assert before.exit_code == 1
    database = check_lines(before.stdout)["database"]
    assert database.startswith("FAIL") and "run `abiquo-workflow migrate`" in database, database
    assert migrated.exit_code == 0, migrated.output
    assert after.exit_code == 0, after.output
    assert check_lines(after.stdout)["database"].startswith("OK")


def test_a_database_password_never_appears_in_the_check_output(check_config: Config) -> None:
    password = "database-password-7781"
    config = check_config(database={"url": f"postgresql://awf:{password}@127.0.0.1:{free_port()}/awf"})

    result = invoke("--config", str(config), "check")

    assert result.exit_code == 1
    database = check_lines(result.stdout)["database"]
    assert database.startswith("FAIL"), database
    assert password not in result.output
