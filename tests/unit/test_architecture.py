"""The import rules of the layout, read from the code itself (every ``import`` statement).

- One module owns paho: ``faillite/mqtt.py``. Roles get typed messages from it.
- No runtime role imports the tools (``field_kit``: launcher, process supervision, drills,
  simulator, ``faillite up``); only the CLI dispatches to them.
- The shared core (``faillite``) imports no role; roles import the core and not each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROLES = ("broker", "workers", "coordinator", "sensors")
TOOLS = ("field_kit",)
CORE = "faillite"


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in _files(package):
        rel = path.relative_to(REPO).as_posix()
        for line, name in _imports(path):
            if name.split(".")[0] in forbidden:
                out.append(f"{rel}:{line} imports {name}")
    return out


def test_one_module_owns_paho() -> None:
    owners = {"faillite/mqtt.py"}
    found = [
        f"{path.relative_to(REPO).as_posix()}:{line}"
        for package in (CORE, *ROLES, *TOOLS)
        for path in _files(package)
        for line, name in _imports(path)
        if name.split(".")[0] == "paho" and path.relative_to(REPO).as_posix() not in owners
    ]
    assert found == [], "paho outside the transport: " + ", ".join(found)


@pytest.mark.parametrize("package", [CORE, *ROLES])
def test_runtime_never_imports_the_tools(package: str) -> None:
    assert _violations(package, TOOLS) == []


def test_core_imports_no_role() -> None:
    assert _violations(CORE, ROLES) == []


@pytest.mark.parametrize("role", ROLES)
def test_roles_do_not_import_each_other(role: str) -> None:
    others = tuple(r for r in ROLES if r != role)
    assert _violations(role, others) == []
