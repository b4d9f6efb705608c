"""Options shared by several commands, written once: the model type, method parameters, weights from a
few examples (``cocktail merge`` and ``cocktail weights``), how models are run to score (dtype, device
map, offload), and how ``eval`` / ``sweep`` read data."""

from __future__ import annotations

import os
import re
from typing import Optional, Sequence

import click

from cocktail.cli.group import NUMBER
from cocktail.recipe.choices import DTYPES, MODEL_TYPES
from cocktail.recipe.scoring import DEVICE_MAPS, SCORE_DTYPES
from cocktail.recipe.weights_from import DEFAULT_KEEP_TOLERANCE, FewShotOptions
from cocktail.recipe.weights_from import KEYS as FEW_SHOT_KEYS

DEFAULTS = FewShotOptions()


def model_type_option(help: str):
    """``--model-type``, one of the recipe's model types."""
    return click.option("--model-type", type=click.Choice(MODEL_TYPES), default=None,
                        help=f"{help} Default: what the models' config.json says (architectures), encoder when "
                             "it names none; a type the config contradicts is refused.")


def dtype_option(fn):
    return click.option("--dtype", type=click.Choice(DTYPES),
                        help="Output dtype (default: each tensor's dtype in the first model).")(fn)


def trust_remote_code_option(fn):
    """``--trust-remote-code``: let a model folder's own code (``auto_map``) run; off by default."""
    return click.option("--trust-remote-code", is_flag=True,
                        help="Let a model folder's own Python code (auto_map) run; without it such a model is "
                             "refused. Only for folders you trust.")(fn)


def allow_nonfinite_option(fn):
    """``--allow-nonfinite``: write an output even if it would hold NaN or infinite values."""
    return click.option("--allow-nonfinite", is_flag=True,
                        help="Write the output even if a tensor in it would hold NaN or inf (an input holding "
                             "them, a --dtype overflow, a huge --param); refused by default.")(fn)


def adapter_base_option(fn):
    """``--adapter-base``: the model the LoRA adapter folders among ``--models`` apply to."""
    return click.option("--adapter-base", type=click.Path(), metavar="PATH",
                        help="The base model of the LoRA adapter folders among the models (default: the "
                             "base_model_name_or_path of each adapter_config.json).")(fn)


def parse_parameter(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(key, value)``: a number, a comma list of numbers (a gradient over layers),
    true or false (a bool, as the recipe then records it), JSON (``[...]`` or ``{...}``, e.g. filter
    entries), or else the text itself."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="'--param'")
    from cocktail.errors import quoted
    from cocktail.io import json_input

    if NUMBER.match(raw):
        try:
            return key, json_input.integer(raw) if re.fullmatch(r"-?\d+", raw) else float(raw)
        except ValueError as exc:
            raise click.BadParameter(f"{key}: {exc}", param_hint="'--param'") from None
    if raw.lower() in ("true", "false"):
        return key, raw.lower() == "true"
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) > 1 and all(NUMBER.match(p) for p in parts):
        return key, [float(p) for p in parts]
    if raw[:1] in "[{":
        try:
            return key, json_input.loads(raw)
        except ValueError as exc:
            raise click.BadParameter(f"{key}: {quoted(raw)} is not valid JSON ({exc.msg})", param_hint="'--param'") from None
    return key, raw


def scoring_options() -> list:
    """``--score-dtype``, ``--device-map``, ``--max-memory``, ``--offload-folder``: how models are run to
    score (the fields of ``ScoringOptions``), for ``weights``, ``merge``, ``eval`` and ``sweep``."""
    return [
        click.option("--score-dtype", type=click.Choice(SCORE_DTYPES),
                     help="The dtype models run in to score: auto is the checkpoint's own dtype (its config's "
                          "torch_dtype) on a GPU, float32 on CPU; losses and scores are float32 whatever it is  "
                          "[default: auto]"),
        click.option("--device-map", type=click.Choice(DEVICE_MAPS),
                     help="Spread each model over the GPUs, the CPU and disk (with accelerate): what does not fit "
                          "in --max-memory is offloaded to disk and read back layer by layer."),
        click.option("--max-memory", metavar="CAPS",
                     help="Most memory per device, e.g. \"0=20GiB,cpu=30GiB\": with --device-map the rest goes to "
                          "disk; without it, a model that would not fit is refused before loading."),
        click.option("--offload-folder", type=click.Path(file_okay=False), metavar="DIR",
                     help="With --device-map: where weights offloaded to disk go (a temporary folder made in it, "
                          "removed afterwards; never inside an input)  [default: beside the output, else "
                          "cocktail's cache folder]"),
    ]


def few_shot_options(command=None, *, with_seed: bool = True):
    """Add ``--examples`` and the options of the few-shot loss and search to a click command.

    ``with_seed=False`` leaves ``--seed`` to the command (``cocktail merge`` has one seed, the
    recipe's, which also seeds the negatives and holdout split).
    """
    if command is None:
        return lambda cmd: few_shot_options(cmd, with_seed=with_seed)
    options = [
        click.option("--examples", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Compute the weights from these examples (JSONL, JSON list or task-keyed JSON): "
                          "softmax(-loss / temperature) of each model's loss."),
        click.option("--task", multiple=True, metavar="NAME",
                     help="For a task-keyed examples file: the task(s) to use (default: all)."),
        click.option("--temperature", type=float, help=f"Softmax temperature  [default: {DEFAULTS.temperature}]"),
        click.option("--query-instruction", metavar="TEXT",
                     help="Prepended to every query (BGE's retrieval instruction), unless an example has a 'prompt'."),
        click.option("--neg-number", type=int, help=f"Most negatives per query  [default: {DEFAULTS.neg_number}]"),
        click.option("--batch-size", type=int,
                     help=f"Queries that share in-batch negatives (part of the loss)  [default: {DEFAULTS.batch_size}]"),
        click.option("--max-length", type=int, help="Tokens per text  [default: 512; decoders 2048]"),
        click.option("--device", help="Where to compute losses: cpu, cuda, cuda:1  [default: cuda if present]"),
        *scoring_options(),
        click.option("--search", is_flag=True, default=None,
                     help="Search for the weights whose merged model has the lowest example loss."),
        click.option("--search-budget", type=int, help=f"Most merged models the search evaluates  [default: {DEFAULTS.search_budget}]"),
        click.option("--holdout", type=float,
                     help="Examples the search keeps aside: a fraction below 1 or a count  "
                          "[default: a fifth when there are 10 or more]"),
        click.option("--keep", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Examples of what the merge must keep (same formats as --examples, e.g. NLI or STS "
                          "pairs, other tasks): each model's and each searched merge's loss on them is reported, "
                          "and --search keeps it within --keep-tolerance."),
        click.option("--keep-tolerance", type=float, metavar="X",
                     help="With --keep: the search's keep loss may be at most X above the best input's  "
                          f"[default: {DEFAULT_KEEP_TOLERANCE}]"),
        click.option("--keep-weight", type=float, metavar="L",
                     help="With --keep, instead of a tolerance: the search minimises loss + L * keep loss."),
        click.option("--search-space", metavar="SPACE",
                     help="What --search varies: 'models' (one weight per model) or 'layers:K' (K contiguous "
                          "layer groups, embeddings with the first and heads with the last, each with its own "
                          "weights; written as per-tensor weights)  [default: models]"),
    ]
    seed = click.option("--seed", type=int, help="Seed of the negative sampling and holdout split  [default: 0]")
    if with_seed:
        options.append(seed)
    for option in reversed(options):
        command = option(command)
    return command


def weights_from_options(values: dict) -> Optional[dict]:
    """A recipe's ``weights_from`` from the parsed options (``None`` without ``--examples``)."""
    given = {k: v for k, v in values.items() if k in FEW_SHOT_KEYS and not (v is None or v == () or v is False)}
    if "examples" not in given:
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise click.UsageError(f"{flag} needs --examples")
        return None
    for key in ("keep_tolerance", "keep_weight"):
        if key in given and "keep" not in given:
            raise click.UsageError(f"--{key.replace('_', '-')} needs --keep")
    for key in ("search_budget", "holdout", "search_space"):
        if key in given and not given.get("search"):
            raise click.UsageError(f"--{key.replace('_', '-')} needs --search")
    if "task" in given:
        given["task"] = list(given["task"]) if len(given["task"]) > 1 else given["task"][0]
    return given


def check_png_option(name: str, path: Optional[str], inputs: Sequence = ()) -> None:
    """Before the long part: a plot option names a .png file in an existing folder, outside every one of
    ``inputs`` (model folders and data files: cocktail never writes into an input), and matplotlib is there."""
    if not path:
        return
    if not path.lower().endswith(".png"):
        raise click.UsageError(f"{name} writes a PNG: give a file name ending in .png")

    folder = os.path.dirname(os.path.abspath(os.path.expanduser(path)))
    if not os.path.isdir(folder):
        raise click.UsageError(f"{name}: folder {folder} does not exist")
    from pathlib import Path

    from cocktail.io.containment import container, within

    for given in inputs:
        local = Path(os.path.expanduser(str(given))) if given else None
        if local is None or not local.exists():
            continue  # a hub id: nothing of it lies on this disk where a plot could go
        if local.is_dir() and within(Path(folder), container(local)):
            raise click.UsageError(f"{name} {path} lies inside the input {given}: cocktail never writes into an "
                                   "input; give a path elsewhere")
        if not local.is_dir() and os.path.realpath(os.path.join(folder, os.path.basename(path))) == \
                os.path.realpath(local):
            raise click.UsageError(f"{name} {path} is the input {given}: give a path elsewhere")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from cocktail.version import install_hint

        raise click.UsageError(f"{name} needs matplotlib: {install_hint('plot')}") from None


def quiet_transformers() -> None:
    """No "Loading weights" bars from transformers: cocktail shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def encode_options(fn):
    """Options shared by ``eval`` and ``sweep``: how data is read and texts are encoded."""
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress lines or bars on stderr.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")(fn)
    for scoring in reversed(scoring_options()):
        fn = scoring(fn)
    fn = click.option("--device", help="Where to run the models (default: cuda when present, else cpu).")(fn)
    fn = click.option("--hybrid-weights", type=float, nargs=3, default=None, metavar="DENSE SPARSE COLBERT",
                      help="bge-m3's hybrid mode: the weights of its dense, sparse and colbert scores "
                           "(default 0.4 0.2 0.4, as bge-m3's model card advises).")(fn)
    fn = click.option("--max-length", type=click.IntRange(min=1), default=512, show_default=True,
                      help="Longest input in tokens (also capped by the model).")(fn)
    fn = click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                      help="Texts per forward pass.")(fn)
    fn = click.option("--split", default="test", show_default=True, help="qrels split of BEIR folders.")(fn)
    fn = click.option("--query-instruction", help="Text put before every query (not before passages).")(fn)
    fn = click.option("--data", "-d", "data", multiple=True, required=True, metavar="PATH...",
                      help="BEIR folders, query/pos/neg .jsonl files, STS .tsv/.csv files (may be .gz).")(fn)
    fn = trust_remote_code_option(fn)
    fn = adapter_base_option(fn)
    return fn
