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

from cocktail.errors import InputChangedError, InputError, option
from cocktail.io.adapters import AdapterCheckpoint, open_path
from cocktail.io.bounded_yaml import BoundedLoader
from cocktail.io.checkpoints import CheckpointLike, looks_like_hub_id
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


CARD_HEAD_LIMIT = 64 * 1024  # the most of an input's README.md read for its metadata


def card_metadata(folder: Path) -> dict:
    """The hub metadata (YAML front matter) of a model folder's ``README.md``, or ``{}``: never an error,
    and read bounded (the first 64 KB, no YAML aliases), as the folder is not ours."""
    try:
        with open(Path(folder) / CARD_FILE, "rb") as f:
            text = f.read(CARD_HEAD_LIMIT).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    end = text.find("\n---", 3)
    if not text.startswith("---") or end < 0:
        return {}
    front = text[3:end]
    try:
        data = yaml.load(front, Loader=BoundedLoader)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def hub_id(checkpoint: CheckpointLike) -> Optional[str]:
    """The hub id a model came from: the id it was given by, or its Hugging Face cache folder's name."""
    source = str(checkpoint.source)
    if not Path(source).expanduser().exists() and looks_like_hub_id(source):
        return source
    for part in Path(checkpoint.root).parts:
        if part.startswith("models--") and "--" in part[len("models--"):]:
            return part[len("models--"):].replace("--", "/", 1)
    return None


def _strings(value) -> list[str]:
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [v for v in values if isinstance(v, str) and looks_like_hub_id(v)]


def card_inputs(checkpoints: Sequence[CheckpointLike]) -> dict:
    """What the output's card says of its inputs: ``names`` (hub id, else folder name, per input),
    ``base_model`` (the hub ids it derives from: the inputs' own, and their cards' base models) and
    ``licenses`` (each input's licence, where its card gives one)."""
    names, bases, licenses = [], [], []
    for checkpoint in checkpoints:
        identity = hub_id(checkpoint)
        names.append(identity or Path(str(checkpoint.source)).name or str(checkpoint.source))
        meta = card_metadata(checkpoint.root)
        bases += ([identity] if identity else []) + _strings(meta.get("base_model"))
        license = meta.get("license")
        licenses.append(license if isinstance(license, str) else None)
    return {"names": names, "base_model": list(dict.fromkeys(bases)), "licenses": licenses}


def model_card(recipe: dict, weights: list, summary: dict, library_name: str, version: str, inputs: dict,
               seeded: bool) -> str:
    """The output's ``README.md``: hub metadata (base models as hub ids, never local paths; the inputs'
    licence when they agree), the weights of each input and how to rebuild the merge.

    ``inputs`` comes from :func:`card_inputs` (models, then the base model); ``seeded``: the method
    draws random numbers, so the seed is part of the result."""
    count = len(recipe["models"])
    names = inputs["names"]
    known = {lic for lic in inputs["licenses"] if lic}
    front: dict = {}
    if inputs["base_model"]:
        front["base_model"] = inputs["base_model"]
    if len(known) == 1 and all(inputs["licenses"]):
        front["license"] = known.pop()
    front.update({"library_name": library_name, "tags": ["merge", "cocktail"]})
    lines = ["---", dump_yaml(front).rstrip(), "---", "",
             "# Merged model", "",
             f"This model was merged with [cocktail](https://pypi.org/project/cocktail/) {version} "
             f"using the `{recipe['merge_method']}` method ({recipe['model_type']}).", "",
             "| model | weight |", "|---|---|"]
    for name, weight in zip(names[:count], weights):
        lines.append(f"| `{name}` | {format_weight(weight)} |")
    if recipe.get("base_model"):
        lines.append(f"| `{names[count]}` (base) | |")
    if recipe.get("parameters"):
        lines += ["", "Parameters: " + ", ".join(f"`{k}` = `{v}`" for k, v in recipe["parameters"].items())
                  + (f" (seed {recipe.get('seed', 0)})." if seeded else ".")]
    if len({lic or "unknown" for lic in inputs["licenses"]}) > 1:
        given = ", ".join(f"`{n}`: {lic or 'not stated'}" for n, lic in zip(names, inputs["licenses"]))
        lines += ["", f"The inputs' licences differ ({given}): check that they allow this merge and say which "
                      "applies."]
    lines += ["",
              f"{summary['merged_tensors']} tensors merged ({summary['parameters']:,} parameters), "
              f"{summary['copied_tensors']} copied; output dtypes: "
              + ", ".join(f"{k} ({v})" for k, v in summary["output_dtypes"].items()) + ".", "",
              f"The full recipe, with the sha256 of every input weight file, is in `{RECIPE_FILE}`; "
              f"`cocktail run {RECIPE_FILE} --output <folder>` rebuilds this model.", ""]
    return "\n".join(lines)


# -- --verify ------------------------------------------------------------------------------------

def changed_inputs(recorded: Optional[dict], hashes: list[dict]) -> list[str]:
    """Warnings for a rerun whose inputs are not the files its recipe's provenance recorded (found
    from the hashes the merge computed anyway; ``--verify`` refuses such a run before it starts)."""
    inputs = (recorded or {}).get("inputs")
    if not isinstance(inputs, list) or len(inputs) != len(hashes):
        return []
    messages = []
    for record, current in zip(inputs, hashes):
        before = record.get("sha256") if isinstance(record, dict) else None
        if not isinstance(before, dict):
            continue
        changed = sorted(name for name in set(before) | set(current) if before.get(name) != current.get(name))
        if changed:
            messages.append(f"input {record.get('path')} changed since its recipe was written ({', '.join(changed)}): "
                            f"this output is not the merge the recipe recorded (with {option('verify')} such a run "
                            f"is refused)")
    return messages


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
        raise InputError(f"{option('verify')} needs a recipe with provenance (the cocktail_recipe.yaml written into a "
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
