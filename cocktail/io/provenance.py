"""What the output says about itself, and how that is checked later.

An output folder holds the resolved recipe (``cocktail_recipe.yaml``: weights used, inputs with the
sha256 of every weight file, the sha256 of every side file it copied, versions) and a model card
(``README.md``). ``--verify`` hashes a recipe's inputs again (weights, config, tokenizer and
sentence-transformers files; never from the hash cache) and compares them with what its provenance
recorded.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import yaml

from cocktail.errors import InputChangedError, InputError, few_names, option, warn
from cocktail.io.adapters import AdapterCheckpoint, open_path
from cocktail.io.bounded_yaml import BoundedLoader
from cocktail.io.checkpoints import CheckpointLike, looks_like_hub_id
from cocktail.io.containment import inside, read_inside
from cocktail.io.hashing import relative, sha256_file
from cocktail.io.sidefiles import side_file_folder, side_file_hashes
from cocktail.version import DISTRIBUTION, PROJECT_PAGE

RECIPE_FILE = "cocktail_recipe.yaml"
CARD_FILE = "README.md"


def hash_threads() -> int:
    """Threads that hash inputs beside the merge: the cores the merge's own thread leaves (1 to 4)."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class InputHasher:
    """Hash every input (its weight files, or its tensors when it is in memory) in background threads
    while the merge runs, file by file (a sharded model's shards on several threads where there are
    cores to spare; files the hash cache knows cost nothing): ``result()`` gives one
    ``{file: sha256}`` per checkpoint, in order."""

    def __init__(self, checkpoints: Sequence[CheckpointLike]):
        self._pool = ThreadPoolExecutor(max_workers=hash_threads(), thread_name_prefix="cocktail-sha256")
        self._jobs: list[dict[str, Future] | Future] = []
        for checkpoint in checkpoints:
            files = _named_weight_files(checkpoint)
            if files:
                self._jobs.append({name: self._pool.submit(sha256_file, path) for name, path in files.items()})
            else:  # in memory: the tensors themselves
                self._jobs.append(self._pool.submit(checkpoint.content_hash))

    def result(self) -> list[dict[str, str]]:
        try:
            return [{name: job.result() for name, job in jobs.items()} if isinstance(jobs, dict) else jobs.result()
                    for jobs in self._jobs]
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
    and read bounded (the first 64 KB, no YAML aliases, only a regular file inside the folder), as the
    folder is not ours. A card that cannot be read so is skipped with a warning."""
    path = Path(folder) / CARD_FILE
    if not os.path.lexists(path):
        return {}
    try:
        text = read_inside(path, Path(folder), CARD_HEAD_LIMIT).decode("utf-8")
    except InputError as exc:
        warn(f"{exc}: its model card metadata (base_model, license) is not used")
        return {}
    except UnicodeDecodeError:
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
             f"This model was merged with [{DISTRIBUTION}]({PROJECT_PAGE}) {version} "
             f"using the `{recipe['merge_method']}` method ({recipe['model_type']}).", "",
             "| model | weight |", "|---|---|"]
    for name, weight in zip(names[:count], weights):
        lines.append(f"| `{name}` | {format_weight(weight)} |")
    if recipe.get("base_model"):
        lines.append(f"| `{names[count]}` (base) | |")
    if recipe.get("parameters"):
        lines += ["", "Parameters: " + ", ".join(f"`{k}` = `{v}`" for k, v in recipe["parameters"].items())
                  + (f" (seed {recipe.get('seed', 0)})." if seeded else ".")]
    lines += _few_shot_lines(((recipe.get("provenance") or {}).get("weights_from")), names[:count])
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


def _few_shot_lines(few_shot: Optional[dict], names: Sequence[str]) -> list[str]:
    """The card's account of weights computed from examples: the examples, the keep set and its
    tolerance, the search, and the losses of each input and of the merge."""
    if not isinstance(few_shot, dict):
        return []

    def file_name(source) -> str:
        return Path(str(source)).name or str(source)

    def number(value) -> str:
        return "-" if value is None else f"{value:.4g}"

    lines = ["", f"The weights were computed from {few_shot.get('examples')} examples "
                 f"(`{file_name(few_shot.get('examples_source'))}`, sha256 `{str(few_shot.get('examples_sha256'))[:12]}`) "
                 f"with LM-Cocktail's few-shot weighting ({few_shot.get('model_type')} loss, temperature "
                 f"{few_shot.get('temperature')})."]
    search = few_shot.get("search")
    keep = few_shot.get("keep_losses")
    if few_shot.get("keep_source"):
        rule = (f"the search minimised loss + {few_shot['keep_weight']:g} × keep loss"
                if few_shot.get("keep_weight") is not None else
                f"the search kept the keep loss at most {few_shot.get('keep_tolerance'):g} above the best input's")
        lines.append(f"Keep set: {few_shot.get('keep_examples')} examples (`{file_name(few_shot['keep_source'])}`, "
                     f"sha256 `{str(few_shot.get('keep_sha256'))[:12]}`); {rule}.")
    if search:
        lines.append(f"The weights were searched ({search.get('evaluations')} merges evaluated, search space "
                     f"`{search.get('search_space', 'models')}`).")
        for group, weights in zip(search.get("layer_groups") or [], search.get("group_weights") or []):
            first, last = group["layers"]
            extra = f" and {group['with']}" if group.get("with") else ""
            lines.append(f"- layers {first}-{last}{extra}: "
                         + ", ".join(f"`{n}` {w:.4g}" for n, w in zip(names, weights)))
    lines += ["", "| | loss | " + ("keep loss |" if keep else ""), "|---|---|" + ("---|" if keep else "")]
    for i, name in enumerate(names):
        lines.append(f"| `{name}` | {number(few_shot['losses'][i])} |" + (f" {number(keep[i])} |" if keep else ""))
    if search:
        lines.append(f"| softmax weights | {number(search.get('start_loss'))} |"
                     + (f" {number(search.get('start_keep_loss'))} |" if keep else ""))
        lines.append(f"| this merge | {number(search.get('loss'))} |"
                     + (f" {number(search.get('keep_loss'))} |" if keep else ""))
    return lines


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


def changed_side_files(recorded: Optional[dict], current: dict[str, str]) -> list[str]:
    """A warning when the side files a rerun copied (config, tokenizer, sentence-transformers files)
    are not the ones its recipe's provenance recorded."""
    side = (recorded or {}).get("side_files")
    before = side.get("sha256") if isinstance(side, dict) else None
    if not isinstance(before, dict):
        return []
    changed = sorted(name for name in set(before) | set(current) if before.get(name) != current.get(name))
    if not changed:
        return []
    return [f"side files of {side.get('from')} changed since its recipe was written ({few_names(changed)}): this "
            f"output is not the merge the recipe recorded (with {option('verify')} such a run is refused)"]


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
    first_root = None
    for (source, adapter_base), record in zip(sources, recorded):
        hashes = record.get("sha256") if isinstance(record, dict) else None
        if not isinstance(hashes, dict) or not hashes:
            raise InputError(f"the recipe's provenance has no sha256 for input {source}: cannot verify")
        with open_path(source, adapter_base) as checkpoint:
            root = checkpoint.root
            current = _named_weight_files(checkpoint)
        first_root = root if first_root is None else first_root
        for name in sorted(set(current) - set(hashes)):
            raise InputChangedError(f"input changed since the recipe was written: {current[name]} is a weight "
                                    f"file the recipe does not record")
        for name, expected in hashes.items():
            _check_hash(current.get(name) or inside(root, name, "file", "the recipe's provenance"), expected)
            checked += 1
    return checked + _verify_side_files(recipe, provenance.get("side_files"), first_root)


def _check_hash(path: Path, expected) -> None:
    """Refuse unless ``path`` is a file whose sha256, read now (never from the cache), is ``expected``."""
    if not path.is_file():
        raise InputChangedError(f"input changed since the recipe was written: {path} is missing")
    actual = sha256_file(path, cached=False)
    if actual != expected:
        raise InputChangedError(f"input changed since the recipe was written: {path} has sha256 "
                                f"{actual[:12]}..., the recipe recorded {str(expected)[:12]}...")


def _verify_side_files(recipe, recorded, first_root: Path) -> int:
    """Compare the side files a rerun would copy (config, tokenizer, sentence-transformers files) with
    the provenance's record of them; returns how many were checked. Recipes written before cocktail
    recorded side files have none to check."""
    if recorded is None:
        return 0
    hashes = recorded.get("sha256") if isinstance(recorded, dict) else None
    if not isinstance(hashes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()):
        raise InputError("the recipe's provenance.side_files is not a mapping of file names to sha256: cannot verify")
    source = side_file_folder(recipe.config_from, first_root)
    current = side_file_hashes(source)
    for name in sorted(set(current) | set(hashes)):
        path = source / name
        if name not in hashes:
            raise InputChangedError(f"input changed since the recipe was written: {path} is a file the output "
                                    f"would copy that the recipe does not record")
        if name not in current:
            raise InputChangedError(f"input changed since the recipe was written: {path} is missing")
        if current[name] != hashes[name]:
            raise InputChangedError(f"input changed since the recipe was written: {path} has sha256 "
                                    f"{current[name][:12]}..., the recipe recorded {hashes[name][:12]}...")
    return len(hashes)
