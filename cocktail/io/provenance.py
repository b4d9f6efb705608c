"""What the output says about itself, and how that is checked later.

An output folder holds the resolved recipe (``cocktail_recipe.yaml``: weights used, inputs with the
sha256 of every weight file, versions) and a model card (``README.md``). ``--verify`` hashes a
recipe's inputs again and compares them with what its provenance recorded.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import yaml

from cocktail.errors import InputChangedError, InputError
from cocktail.io.adapters import AdapterCheckpoint, open_path
from cocktail.io.checkpoints import CheckpointLike
from cocktail.io.hashing import relative, sha256_file

RECIPE_FILE = "cocktail_recipe.yaml"
CARD_FILE = "README.md"


class InputHasher:
    """Hash every input (its weight files, or its tensors when it is in memory) in a background thread
    while the merge runs: ``result()`` gives one ``{file: sha256}`` per checkpoint, in order."""

    def __init__(self, checkpoints: Sequence[CheckpointLike]):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cocktail-sha256")
        self._jobs: list[Future] = [self._pool.submit(c.content_hash) for c in checkpoints]

    def result(self) -> list[dict[str, str]]:
        try:
            return [job.result() for job in self._jobs]
        finally:
            self._pool.shutdown(wait=True)

    def cancel(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def format_weight(weight) -> str:
    """A weight for people: a number, ``per tensor`` for a schedule, ``-`` for methods without weights."""
    if weight is None:
        return "-"
    if isinstance(weight, (int, float)):
        return f"{weight:.6g}"
    return "per tensor"


def model_card(recipe: dict, weights: list, summary: dict, library_name: str, version: str) -> str:
    models = [m["path"] for m in recipe["models"]]
    front = {
        "base_model": models + ([recipe["base_model"]] if recipe.get("base_model") else []),
        "library_name": library_name,
        "tags": ["merge", "cocktail"],
    }
    lines = ["---", dump_yaml(front).rstrip(), "---", "",
             "# Merged model", "",
             f"This model was merged with [cocktail](https://pypi.org/project/cocktail/) {version} "
             f"using the `{recipe['merge_method']}` method ({recipe['model_type']}).", "",
             "| model | weight |", "|---|---|"]
    for path, weight in zip(models, weights):
        lines.append(f"| `{path}` | {format_weight(weight)} |")
    if recipe.get("base_model"):
        lines.append(f"| `{recipe['base_model']}` (base) | |")
    if recipe.get("parameters"):
        lines += ["", "Parameters: " + ", ".join(f"`{k}` = `{v}`" for k, v in recipe["parameters"].items())
                  + f" (seed {recipe.get('seed', 0)})."]
    lines += ["",
              f"{summary['merged_tensors']} tensors merged ({summary['parameters']:,} parameters), "
              f"{summary['copied_tensors']} copied; output dtypes: "
              + ", ".join(f"{k} ({v})" for k, v in summary["output_dtypes"].items()) + ".", "",
              f"The full recipe, with the sha256 of every input weight file, is in `{RECIPE_FILE}`; "
              f"`cocktail run {RECIPE_FILE} --output <folder>` rebuilds this model.", ""]
    return "\n".join(lines)


# -- --verify ------------------------------------------------------------------------------------

def _inputs_of(recipe) -> list[tuple[str, Optional[str]]]:
    """``(path, adapter base)`` of every input: the models, then the base model."""
    return [(m.path, m.base) for m in recipe.models] + ([(recipe.base_model, None)] if recipe.base_model else [])


def _named_weight_files(checkpoint) -> dict[str, Path]:
    """A checkpoint's weight files by the names its ``content_hash`` records them under."""
    if isinstance(checkpoint, AdapterCheckpoint):
        return checkpoint.named_weight_files()
    return {relative(p, checkpoint.root): p for p in checkpoint.weight_files()}


def verify_inputs(recipe) -> int:
    """Hash the recipe's current input weight files and compare with its provenance.

    Returns the number of files checked. Raises :class:`InputChangedError` naming the first file that
    differs, and :class:`~cocktail.errors.InputError` when the recipe has no provenance to check against.
    """
    provenance = recipe.provenance or {}
    recorded = provenance.get("inputs")
    if not isinstance(recorded, list) or not recorded:
        raise InputError("--verify needs a recipe with provenance (the cocktail_recipe.yaml written into a "
                         "merged folder); this recipe records no input hashes")
    sources = _inputs_of(recipe)
    if len(recorded) != len(sources):
        raise InputChangedError(f"the recipe's provenance records {len(recorded)} inputs but it merges "
                                f"{len(sources)} (models and base model): cannot verify")
    checked = 0
    for (source, adapter_base), record in zip(sources, recorded):
        hashes = record.get("sha256") if isinstance(record, dict) else None
        if not isinstance(hashes, dict) or not hashes:
            raise InputError(f"the recipe's provenance has no sha256 for input {source}: cannot verify")
        with open_path(source, adapter_base) as checkpoint:
            root = checkpoint.root
            current = _named_weight_files(checkpoint)
        for name in sorted(set(current) - set(hashes)):
            raise InputChangedError(f"input changed since the recipe was written: {current[name]} is a weight "
                                    f"file the recipe does not record")
        for name, expected in hashes.items():
            path = current.get(name, root / name)
            if not path.is_file():
                raise InputChangedError(f"input changed since the recipe was written: {path} is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise InputChangedError(f"input changed since the recipe was written: {path} has sha256 "
                                        f"{actual[:12]}..., the recipe recorded {str(expected)[:12]}...")
            checked += 1
    return checked
