"""The package's shape: rooms import one way, no module imports itself round a circle, and each fact
(recipe keys, few-shot keys) has one owner that every door follows."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import click
from conftest import REPO

PACKAGE = REPO / "cocktail"

# A room may import rooms of the same or a lower rank, never a higher one. Rank 0: leaves that
# import nothing of cocktail but errors, so any room (and the light CLI) may use them.
LEAVES = {"cocktail.errors", "cocktail.version", "cocktail.recipe.choices", "cocktail.recipe.weights_from",
          "cocktail.recipe.sizes", "cocktail.recipe.scoring"}
RANKS = {"io": 1, "merging": 2, "recipe": 3, "modeling": 4, "fewshot": 5, "evaluation": 6, "cli": 8}
TOP = 7  # cocktail.runner, cocktail.api, cocktail.callback
ENTRY = {"cocktail.__main__": 9}  # python -m cocktail: the CLI


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def rank(module: str) -> int:
    if module in LEAVES:
        return 0
    if module in ENTRY:
        return ENTRY[module]
    parts = module.split(".")
    if len(parts) == 1:
        return TOP  # cocktail/__init__: lazy public names
    return RANKS.get(parts[1], TOP)


def target_of(node: ast.ImportFrom | ast.Import, alias: ast.alias) -> str | None:
    """The cocktail module an import statement names (``from cocktail.io import memory`` names the module)."""
    if isinstance(node, ast.Import):
        name = alias.name
    else:
        assert node.level == 0, "imports inside the package are absolute"
        name = node.module or ""
        if f"{name}.{alias.name}" in MODULES:
            name = f"{name}.{alias.name}"
    return name if name.split(".")[0] == "cocktail" else None


def imports(path: Path, at_top: bool) -> set[str]:
    """The cocktail modules ``path`` imports at module level (``at_top``) or inside functions."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)) and inside != at_top:
                found.update(t for a in child.names if (t := target_of(child, a)))
            visit(child, inside)

    visit(tree, False)
    return found


def test_imports_between_modules_are_at_module_top_outside_the_cli():
    """A circle then fails at import time; only cocktail/__init__ and cli/ import lazily (to stay light)."""
    lazy = {name: sorted(imports(path, at_top=False)) for name, path in MODULES.items()
            if name != "cocktail" and not name.startswith("cocktail.cli")}
    assert {name: found for name, found in lazy.items() if found} == {}


def test_no_module_imports_itself_round_a_circle():
    graph = {name: imports(path, at_top=True) for name, path in MODULES.items()}
    for name, targets in graph.items():
        assert targets <= set(MODULES), f"{name} imports a module that does not exist: {targets - set(MODULES)}"
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            assert state.get(target) != 1, "import circle: " + " -> ".join(path + [target])
            if target not in state:
                walk(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])


def test_rooms_import_one_way():
    upward = [f"{name} imports {target}" for name, path in MODULES.items()
              for target in imports(path, at_top=True) | imports(path, at_top=False) if rank(target) > rank(name)]
    assert upward == []


def test_the_recipe_schema_owns_exactly_the_recipe_fields():
    from cocktail.recipe import schema
    from cocktail.recipe.recipe import ModelEntry, Recipe
    from cocktail.recipe.weights_from import FewShotOptions

    assert schema.TOP_LEVEL_KEYS == tuple(f.name for f in fields(Recipe))
    assert schema.MODEL_KEYS == tuple(f.name for f in fields(ModelEntry))
    assert tuple(schema.WEIGHTS_FROM_CHECKS) == tuple(f.name for f in fields(FewShotOptions))
    assert set(Recipe.from_models(["a"], provenance={}, trust_remote_code=True, allow_nonfinite=True).to_dict()) == set(schema.TOP_LEVEL_KEYS)


def test_every_few_shot_key_is_a_cli_option_of_weights_and_merge():
    from cocktail.cli import cli
    from cocktail.recipe.weights_from import KEYS

    for command in ("weights", "merge"):
        names = {p.name for p in cli.commands[command].params if isinstance(p, click.Option)}
        assert set(KEYS) <= names, (command, set(KEYS) - names)
