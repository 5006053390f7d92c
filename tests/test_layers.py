"""The layer table of docs/design.md, checked: arrows point down the table, never up.

Every module under src/ is parsed with `ast` (never imported, so nothing runs) and its imports are
compared with four rules, one test each, one case per module. Imports inside functions and inside
`if TYPE_CHECKING:` blocks count like any other: a type-only arrow is still an arrow.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PRODUCT = "abiquo_workflow"
SIMULATOR = "abiquo_simulator"

# --- reading the imports ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    name: str
    imports: frozenset[str]  # absolute dotted names, relative imports resolved


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: frozenset[str]
) -> set[str]:
    """The modules one import statement names. `from pkg import sub` names `pkg.sub` when that is a
    module of ours, so that `from abiquo_workflow import display` counts as importing display."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        parent = package[: len(package) - (node.level - 1)]
        base = ".".join([*parent, *([node.module] if node.module else [])])
    found = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    return found or {base}


#: Every module under src/, by dotted name: what the rules are parametrized over.
PATHS = {_module_name(path): path for path in sorted(SRC.rglob("*.py"))}
KNOWN = frozenset(PATHS)


@functools.cache
def read(name: str) -> Module:
    """The module `name` with its imports, parsed when a test first asks for it (not at collection, where
    every test process would parse all of src/)."""
    path = PATHS[name]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imports: set[str] = set()
    for node in ast.walk(tree):  # walks into functions and `if TYPE_CHECKING:` blocks too
        if isinstance(node, ast.Import | ast.ImportFrom):
            imports |= _imported(node, name, path.name == "__init__.py", KNOWN)
    return Module(name, frozenset(imports - {"__future__"}))


def within(name: str, *packages: str) -> bool:
    """Whether `name` is one of `packages` or inside one of them."""
    return any(name == package or name.startswith(package + ".") for package in packages)


def offending(module: Module, *packages: str) -> list[str]:
    return sorted(name for name in module.imports if within(name, *packages))


#: (rule, module) pairs that break a rule today, each with what would fix it. Such a case is a strict
#: xfail: the day the module is fixed it XPASSes, which fails under xfail_strict, to say "remove me".
#: (rule, module) cases that break a rule today, each with why; a strict xfail until fixed. None now.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


def cases(rule: str, modules: Iterable[str]) -> list[object]:
    """One pytest case per module (its name, also the id); a KNOWN_VIOLATIONS entry makes it a strict
    xfail."""
    params: list[object] = []
    for name in sorted(modules):
        reason = KNOWN_VIOLATIONS.get((rule, name))
        marks = [pytest.mark.xfail(strict=True, reason=f"KNOWN_VIOLATIONS: {reason}")] if reason else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


# --- rule (a): the simulator imports nothing of the product -----------------------------------------

#: Nor a server: the product's runners (servers.py) serve the simulator's app, so there is one runner.
SIMULATOR_FORBIDDEN = (PRODUCT, "uvicorn")


@pytest.mark.parametrize("name", cases("simulator", (m for m in PATHS if within(m, SIMULATOR))))
def test_the_simulator_imports_nothing_of_the_product(name: str) -> None:
    module = read(name)
    bad = offending(module, *SIMULATOR_FORBIDDEN)
    assert not bad, (
        f"{module.name} imports {', '.join(bad)}, but the simulator imports nothing of {PRODUCT}: it stands "
        "in for Abiquo, so it must not share code (and mistakes) with the connector it tests; and it runs "
        f"no server of its own ({PRODUCT}.servers serves its app)."
    )


# --- rule (b): the pure modules import no I/O, and only the modules below them ----------------------

#: Direct imports that do I/O: databases, network, mail, web servers, files, processes, event loops.
IO_MODULES = (
    *("sqlalchemy", "alembic", "psycopg", "sqlite3"),
    *("httpx2", "httpx", "httpcore", "aiosmtplib", "aiosmtpd", "smtplib", "ssl", "socket"),
    *("uvicorn", "starlette", "fastapi", "http.client", "http.server", "urllib.request"),
    *("asyncio", "anyio", "selectors", "threading", "subprocess"),
    *("os", "io", "pathlib", "shutil", "tempfile"),
)

#: Each pure module and the project modules it may import (docs/design.md's table; nothing else of ours).
PURE = {
    f"{PRODUCT}.domain": (),
    f"{PRODUCT}.policy": (f"{PRODUCT}.domain", f"{PRODUCT}.config"),
    f"{PRODUCT}.links": (f"{PRODUCT}.domain", f"{PRODUCT}.exceptions", f"{PRODUCT}.config"),
    f"{PRODUCT}.display": (f"{PRODUCT}.domain", f"{PRODUCT}.config"),
}


@pytest.mark.parametrize("name", cases("pure", PURE))
def test_pure_modules_import_no_io_and_nothing_above_them(name: str) -> None:
    module = read(name)
    allowed = PURE[module.name]
    io = offending(module, *IO_MODULES)
    upward = [name for name in offending(module, PRODUCT, SIMULATOR) if name not in allowed]
    assert not io, (
        f"{module.name} imports {', '.join(io)}, but domain, policy, links and display do no I/O: "
        "they hold the plain values and rules every layer uses, and are tested without any server."
    )
    assert not upward, (
        f"{module.name} imports {', '.join(upward)}, but of this project it may import only "
        f"{', '.join(allowed) or 'nothing'} (docs/design.md's module table: arrows point down, never up)."
    )


# --- rule (c): only the store speaks SQL ------------------------------------------------------------

SQL_MODULES = ("sqlalchemy", "alembic", "psycopg", "sqlite3")


@pytest.mark.parametrize("name", cases("sql", (m for m in PATHS if not within(m, f"{PRODUCT}.store"))))
def test_only_the_store_speaks_sql(name: str) -> None:
    module = read(name)
    bad = offending(module, *SQL_MODULES)
    assert not bad, (
        f"{module.name} imports {', '.join(bad)}, but only {PRODUCT}.store speaks SQL: "
        "everything else goes through the store's transitions and queue."
    )


# --- rule (d): only the web package speaks HTTP to people -------------------------------------------

WEB_FRAMEWORKS = ("starlette", "fastapi")

#: Who may import a web framework besides `abiquo_workflow.web`, and why.
WEB_EXCEPTIONS = (
    # The runners: uvicorn serves an ASGI app, typed with starlette.types; they route nothing themselves.
    f"{PRODUCT}.servers",
    # The simulator is a web app of its own (the stand-in Abiquo API and its control page).
    SIMULATOR,
    # Likewise the local mail inbox of the demo and the tests, which serves its own page of messages.
    f"{PRODUCT}.mail.inbox",
)


@pytest.mark.parametrize(
    "name", cases("web", (m for m in PATHS if not within(m, f"{PRODUCT}.web", *WEB_EXCEPTIONS)))
)
def test_only_the_web_speaks_http_to_people(name: str) -> None:
    module = read(name)
    bad = offending(module, *WEB_FRAMEWORKS)
    assert not bad, (
        f"{module.name} imports {', '.join(bad)}, but only {PRODUCT}.web serves pages and routes "
        f"(the exceptions are {', '.join(WEB_EXCEPTIONS)}; see WEB_EXCEPTIONS)."
    )


# --- the rules name modules that exist --------------------------------------------------------------


def test_every_module_the_rules_name_exists() -> None:
    """A renamed module must not make a rule pass by checking nothing."""
    named = [*PURE, *(m for allowed in PURE.values() for m in allowed), *WEB_EXCEPTIONS]
    named += [module for _, module in KNOWN_VIOLATIONS] + [f"{PRODUCT}.store", f"{PRODUCT}.web"]
    assert [name for name in named if name not in PATHS] == []
