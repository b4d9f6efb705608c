"""The command-line options for weights from a few examples, shared by ``cocktail merge`` and
``cocktail weights``, and the table they print. Light: only click is imported here."""

from __future__ import annotations

from typing import Optional

import click

FEW_SHOT_KEYS = ("examples", "task", "temperature", "query_instruction", "neg_number", "batch_size", "max_length",
                 "seed", "device", "search", "search_budget", "holdout")


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
        click.option("--temperature", type=float, help="Softmax temperature  [default: 5.0]"),
        click.option("--query-instruction", metavar="TEXT",
                     help="Prepended to every query (BGE's retrieval instruction), unless an example has a 'prompt'."),
        click.option("--neg-number", type=int, help="Most negatives per query  [default: 7]"),
        click.option("--batch-size", type=int,
                     help="Queries that share in-batch negatives (part of the loss)  [default: 2]"),
        click.option("--max-length", type=int, help="Tokens per text  [default: 512; decoders 2048]"),
        click.option("--device", help="Where to compute losses: cpu, cuda, cuda:1  [default: cuda if present]"),
        click.option("--search", is_flag=True, default=None,
                     help="Search for the weights whose merged model has the lowest example loss."),
        click.option("--search-budget", type=int, help="Most merged models the search evaluates  [default: 30]"),
        click.option("--holdout", type=float,
                     help="Examples the search keeps aside: a fraction below 1 or a count  "
                          "[default: a fifth when there are 10 or more]"),
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
    for key in ("search_budget", "holdout"):
        if key in given and not given.get("search"):
            raise click.UsageError(f"--{key.replace('_', '-')} needs --search")
    if "task" in given:
        given["task"] = list(given["task"]) if len(given["task"]) > 1 else given["task"][0]
    return given


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.6g}"


def format_few_shot(data: dict, show_notes: bool = True) -> str:
    """The table of loss and weight per model, and what the search found."""
    search = data.get("search")
    held = data.get("holdout_losses")
    header = f"  {'loss':>10}  {'holdout':>10}  {'softmax w':>10}  {'weight':>10}  model" if held else \
        f"  {'loss':>10}  {'weight':>10}  model"
    lines = [header]
    for i, model in enumerate(data["models"]):
        if held:
            lines.append(f"  {_number(data['losses'][i]):>10}  {_number(held[i]):>10}  "
                         f"{data['softmax_weights'][i]:>10.6g}  {data['weights'][i]:>10.6g}  {model}")
        else:
            lines.append(f"  {_number(data['losses'][i]):>10}  {data['weights'][i]:>10.6g}  {model}")
    tasks = f", tasks {', '.join(data['tasks'])}" if data.get("tasks") else ""
    lines.append(f"{data['model_type']} loss on {data['examples']} examples ({data['examples_source']}{tasks}); "
                 f"temperature {data['temperature']:g}, seed {data['seed']}, neg_number {data['neg_number']}, "
                 f"batch_size {data['batch_size']}, max_length {data['max_length']}"
                 + (f", pooling {data['pooling']}" if data.get("pooling") else "") + f", device {data['device']}")
    if search:
        lines.append(f"search: {search['evaluations']} merged models evaluated (budget {search['budget']}) on "
                     f"{search['fit_examples']} examples, {search['holdout_examples']} held out")
        lines.append(f"  softmax weights  [{', '.join(f'{w:.4f}' for w in search['start_weights'])}]: "
                     f"loss {_number(search['start_loss'])}, holdout {_number(search['start_holdout_loss'])}")
        lines.append(f"  searched weights [{', '.join(f'{w:.4f}' for w in search['weights'])}]: "
                     f"loss {_number(search['loss'])}, holdout {_number(search['holdout_loss'])}")
        gain = search["improvement"]
        held_gain = (None if search["holdout_loss"] is None
                     else search["start_holdout_loss"] - search["holdout_loss"])
        lines.append(f"  the searched weights lower the loss by {gain:.6g} on the searched examples"
                     + ("" if held_gain is None else f" and by {held_gain:.6g} on the held-out ones"
                        + (" (worse: overfitting)" if held_gain < 0 else "")))
    for note in (data.get("notes") or []) if show_notes else []:
        lines.append(f"note: {note}")
    return "\n".join(lines)
