"""The package's layers point one way: no module imports a layer above its own, and no import cycle.

Read from the source (every ``import`` statement, at module level or inside a function), so a lazy
import that reaches up is caught as well as an eager one. Imports under ``if TYPE_CHECKING:`` never
run and are left out (they name types for annotations only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "saelens_gemmascope"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE

#: Lowest first. A module may import its own layer and any layer below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    # base: records and helpers that know nothing of the layers above
    (
        "_version",
        "cache_dir",
        "compat",
        "contributions",
        "data",
        "post_import",
        "progress",
        "quiet",
        "registry",
    ),
    ("models",),
    ("directory",),
    ("recipe",),
    ("distributed",),
    ("runners",),
    ("suite",),
    ("evaluation",),
    # the plugin API: the hook specifications (light; they name the records of the layers below)
    ("hookspecs",),
    # the contributions: the built-in Gemma Scope plugins and the demo plugin
    ("builtin", "demo"),
    ("host",),
    # the command line and the package's own ``__init__`` (the facade that wires host and registry)
    ("cli", "__init__"),
)


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = "__init__" if len(parts) == 1 else parts[1]
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} belongs to no layer: add its top-level name to LAYERS")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that ``source`` (the text of ``module``) imports; ``from a import b``
    counts ``a.b`` when that is a module."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            for child in getattr(node, "orelse", []):
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    known = {module_name(path) for path in paths}
    return {
        module_name(path): imported_modules(
            path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py", known
        )
        for path in paths
    }


def without_parent_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edges from a module to a package that contains it: Python imports the parent
    packages first anyway, so such an edge (``host`` naming ``saelens_gemmascope`` in ``from
    saelens_gemmascope import hookspecs``) orders nothing."""
    return {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}


GRAPH = without_parent_packages(import_graph())


def test_every_module_has_a_layer() -> None:
    for module in GRAPH:
        layer_of(module)


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} (layer {LAYERS[layer_of(module)]}) imports {target} (layer {LAYERS[layer_of(target)]})"
        for module, targets in GRAPH.items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            # A package's __init__ importing its own submodules is not a cycle through them.
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                cycle = walk(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = walk(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_can_fail() -> None:
    """The cycle finder finds a planted cycle and the layer check sees a planted upward import."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of(f"{PACKAGE}.suite.plan") > layer_of(f"{PACKAGE}.recipe.trainer")


@pytest.mark.parametrize(
    "statement", ["from saelens_gemmascope.suite import plan", "import saelens_gemmascope.cli"]
)
def test_a_lazy_upward_import_is_seen(statement: str) -> None:
    source = f"def later():\n    {statement}\n"
    found = imported_modules(source, f"{PACKAGE}.models.spec", False, set(GRAPH))
    assert any(layer_of(target) > layer_of(f"{PACKAGE}.models.spec") for target in found)


def test_a_type_checking_import_is_left_out() -> None:
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from saelens_gemmascope.suite import plan\n"
    )
    assert imported_modules(source, f"{PACKAGE}.models.spec", False, set(GRAPH)) == set()
