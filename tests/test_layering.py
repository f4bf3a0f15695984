"""The package's import structure: no circles, and each layer imports only what lies below it.

Every import counts, whether at module level, inside a function, or under
``if TYPE_CHECKING``: a circle hidden by a deferred import is still a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "actorlock"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(module: str, level: int, importer: str) -> str:
    if level == 0:
        return module
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(name: str) -> Iterator[str]:
    """Every module ``name`` imports (actorlock's own resolved to modules, others by top name)."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module or "", node.level, name)
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield submodule if submodule in MODULES else target


def graph() -> dict[str, set[str]]:
    return {
        name: {t for t in imports_of(name) if t in MODULES and t != name and not name.startswith(t + ".")}
        for name in MODULES
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_circle_and_a_deferred_import() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    # actors/api.py-style: the host is imported by api inside the module body.
    assert "actorlock.actors.host" in graph()["actorlock.api"]


def test_no_import_circle_in_the_package() -> None:
    assert cycles(graph()) == []


def _importers_of(prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    return {
        name: {t for t in imports_of(name) if t.startswith(prefixes)}
        for name in MODULES
        if any(t.startswith(prefixes) for t in imports_of(name))
    }


def test_the_protocol_imports_only_the_model_and_the_errors() -> None:
    allowed = ("actorlock.protocol", "actorlock.model", "actorlock.errors", "actorlock.constants")
    for name in MODULES:
        if name.startswith("actorlock.protocol"):
            own = {t for t in imports_of(name) if t.startswith("actorlock")}
            assert {t for t in own if not t.startswith(allowed)} == set(), name
            assert not {t for t in imports_of(name) if t.split(".")[0] in ("anyio", "zmq", "trio")}, name


def test_only_the_transport_imports_zmq() -> None:
    users = set(_importers_of(("zmq",)))
    assert users, "the transport imports zmq: the checker must see it"
    assert all(name.startswith("actorlock.transport") for name in users), sorted(users)


def test_only_the_backends_take_file_locks() -> None:
    users = set(_importers_of(("fcntl",)))
    assert all(name.startswith("actorlock.backends") for name in users), sorted(users)


@pytest.mark.parametrize("layer", ["actorlock.actors", "actorlock.backends", "actorlock.transport"])
def test_lower_layers_never_import_the_api_the_seed_layer_the_cli_or_the_harness(layer: str) -> None:
    upper = (
        "actorlock.api",
        "actorlock.lockmanager",
        "actorlock.cli",
        "actorlock.testing",
        "actorlock._verify",
        "actorlock.demo",
    )
    for name in MODULES:
        if name.startswith(layer):
            assert {t for t in imports_of(name) if t.startswith(upper)} == set(), name


def test_only_the_cli_reaches_the_projects_own_drivers() -> None:
    # actorlock._verify (chaos, explorer, scenarios) is this project's, not the library's or the kit's.
    for name in MODULES:
        if name.startswith("actorlock._verify") or name == "actorlock.cli":
            continue
        assert {t for t in imports_of(name) if t.startswith("actorlock._verify")} == set(), name


def test_the_domain_actor_and_the_driver_see_the_host_only_through_its_ports() -> None:
    for name in ("actorlock.actors.domain", "actorlock.actors.migration"):
        own = set(imports_of(name))
        host_side = {
            "actorlock.actors.host",
            "actorlock.actors.domains",
            "actorlock.actors.migrations",
            "actorlock.actors.peer_service",
            "actorlock.actors.lifeline",
        }
        assert own & host_side == set(), name
