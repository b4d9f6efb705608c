"""Recipe YAML read with the line of every key, and ``--set KEY.PATH=VALUE`` overrides applied to it.

The loader is PyYAML's safe loader (no tags that build objects), bounded (no anchors or aliases, no
deep nesting: see ``io/bounded_yaml.py``), reading floats the YAML 1.2 way.
Each key path (``("models", 1, "weight")``) maps to its line, so every check can say where it failed.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import yaml

from cocktail.errors import RecipeError, quoted
from cocktail.io.bounded_yaml import BoundedLoader, YAMLLimitError

KeyPath = tuple  # ("models", 1, "weight")
SET = "--set"  # the "line" of a value given on the command line

class RecipeLoader(BoundedLoader):
    """PyYAML's safe loader, bounded (no aliases, no deep nesting), reading floats the YAML 1.2 way
    (``1e-3`` is a number, not a string)."""


RecipeLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def key_path(parts: KeyPath) -> str:
    """``("models", 1, "weight")`` -> ``models[1].weight``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def parse_key_path(text: str) -> KeyPath:
    """``models.1.weight`` or ``models[1].weight`` -> ``("models", 1, "weight")``."""
    parts: list = []
    for piece in re.sub(r"\[(\d+)\]", r".\1", text.strip()).split("."):
        if not piece:
            raise RecipeError(f"--set {text}: not a key path (examples: dtype, models.1.weight, parameters.density)")
        parts.append(int(piece) if piece.isdigit() else piece)
    return tuple(parts)


def parse_yaml(text: str, source: str) -> tuple[Any, dict]:
    """The data of a recipe file, and the line of each key path in it (``{("models", 1): 7}``)."""
    try:
        loader = RecipeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        if isinstance(exc, YAMLLimitError):
            raise RecipeError(f"{where}: {exc.problem}") from None
        raise RecipeError(f"{where}: not valid YAML ({exc.problem or exc.context})") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: not valid YAML ({exc})") from None
    lines: dict = {}
    duplicates: list[str] = []
    if node is not None:
        _index_lines(node, (), lines, duplicates, source)
    if duplicates:
        raise RecipeError(duplicates)
    return data, lines


def _index_lines(node, path: KeyPath, lines: dict, duplicates: list, source: str) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                duplicates.append(f"{source}:{line}: {key_path(path + (key,))}: duplicate key "
                                  f"(first given on line {seen[key]})")
            seen[key] = line
            _index_lines(value_node, path + (key,), lines, duplicates, source)
            lines[path + (key,)] = line  # point at the key, where the reader looks
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, path + (i,), lines, duplicates, source)


def apply_override(data: Any, lines: dict, assignment: str, keys: Sequence[str] = ()) -> dict:
    """Apply one ``KEY.PATH=VALUE`` (the value read as YAML) to the recipe data; returns the data.
    A first key not among ``keys`` (the recipe's top-level keys, when given) is set whole, whatever path
    follows it, so the schema check reports it as an unknown key, with a did-you-mean (``modls.1.weight``
    would otherwise fail as an index past the end of a new list)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {assignment}: expected KEY=VALUE (e.g. --set dtype=float16, --set models.1.weight=0.3)")
    parts = parse_key_path(key)
    try:
        value = yaml.load(raw, Loader=RecipeLoader) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"--set {key}: the value {quoted(raw)} is not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        data = {}
    if keys and parts[0] not in keys:
        parts = parts[:1]
    container: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = key_path(parts[:depth]) if depth else "the recipe"
        if isinstance(part, int):
            if not isinstance(container, list):
                raise RecipeError(f"--set {key}: {here} is not a list, so [{part}] cannot be set")
            if part > len(container):
                raise RecipeError(f"--set {key}: {here} has {len(container)} entries; "
                                  f"an index can be at most {len(container)} (to add one)")
            if part == len(container):
                container.append(None)
        elif not isinstance(container, dict):
            raise RecipeError(f"--set {key}: {here} is not a mapping, so .{part} cannot be set")
        if last:
            container[part] = value
        else:
            following = parts[depth + 1]
            current = container.get(part) if isinstance(container, dict) else container[part]
            if parts[:1] == ("models",) and depth == 1 and isinstance(current, str):
                container[part] = {"path": current}  # "- ./a" is short for "- path: ./a"
            elif current is None:
                container[part] = [] if isinstance(following, int) else {}
            container = container[part]
    for known in [p for p in lines if p[:len(parts)] == parts]:
        del lines[known]
    lines[parts] = SET
    return data
