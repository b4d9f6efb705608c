"""What the output says about itself: the resolved recipe (``cocktail_recipe.yaml``) and a model card."""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import yaml

RECIPE_FILE = "cocktail_recipe.yaml"
CARD_FILE = "README.md"
CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)  # releases the GIL: hashing runs beside the merge
    return digest.hexdigest()


class InputHasher:
    """Hash every input weight file in a background thread while the merge runs."""

    def __init__(self, files_by_model: list[tuple[Path, list[Path]]]):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cocktail-sha256")
        self._jobs: list[tuple[Path, list[tuple[str, Future]]]] = [
            (root, [(_relative(f, root), self._pool.submit(sha256_file, f)) for f in files])
            for root, files in files_by_model
        ]

    def result(self) -> list[dict[str, str]]:
        try:
            return [{name: job.result() for name, job in jobs} for _, jobs in self._jobs]
        finally:
            self._pool.shutdown(wait=True)

    def cancel(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


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
