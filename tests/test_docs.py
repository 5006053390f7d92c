"""The README documents every setting, command and route (they are the public contract)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main

from abiquo_workflow.cli import app
from abiquo_workflow.config import Settings
from abiquo_workflow.runtime import web_lifespan
from abiquo_workflow.web.app import create_app

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")

SETTING_KEYS = [
    f"{section}.{key}"
    for section, field in Settings.model_fields.items()
    for key in field.annotation.model_fields  # type: ignore[union-attr]
]


@pytest.mark.parametrize("key", SETTING_KEYS)
def test_every_setting_is_documented(key: str) -> None:
    assert f"| `{key}` |" in README


def _commands() -> list[str]:
    group = typer.main.get_group(app)
    names = []
    for name, command in group.commands.items():
        sub = getattr(command, "commands", None)
        names.extend(f"{name} {child}" for child in sub) if sub else names.append(name)
    return names


@pytest.mark.parametrize("command", _commands())
def test_every_command_is_documented(command: str) -> None:
    assert f"| `{command}" in README


def _routes() -> list[str]:
    paths = {
        getattr(route, "path", "")
        for route in create_app(Settings(), lifespan=web_lifespan(Settings())).routes
    }
    return sorted(p for p in paths if p and not p.startswith("/static"))


@pytest.mark.parametrize("path", _routes())
def test_every_route_is_documented(path: str) -> None:
    assert path in README
