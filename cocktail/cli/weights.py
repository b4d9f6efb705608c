"""``cocktail weights``: each model's loss on a few examples and the weights made of them."""

from __future__ import annotations

import json
from typing import Optional

import click

from cocktail.cli.group import VariadicCommand, cli
from cocktail.cli.options import (
    DEFAULTS,
    FEW_SHOT_KEYS,
    adapter_base_option,
    few_shot_options,
    model_type_option,
    trust_remote_code_option,
    weights_from_options,
)


@cli.command("weights", cls=VariadicCommand)
@click.option("--models", "-m", "models", multiple=True, required=True, metavar="PATH...",
              help="Models to score: folders, .safetensors files or cached hub ids.")
@model_type_option("What the models are: embedder, one-logit cross-encoder, causal LM.")
@click.option("--json", "as_json", is_flag=True, help="Print {\"models\", \"losses\", \"weights\", ...} as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@few_shot_options
@trust_remote_code_option
@adapter_base_option
def weights_command(models, model_type, as_json, quiet, trust_remote_code, adapter_base, **few_shot):
    """Each model's loss on a few examples, and the merge weights softmax(-loss / temperature).

    For bge-m3 the loss is the dense one (the CLS embedding), as in LM-Cocktail; its sparse and ColBERT
    head files are merged with the weights found.
    """
    from cocktail.fewshot.weighting import few_shot_losses

    options = weights_from_options(few_shot)
    if options is None:
        raise click.UsageError("missing option '--examples'")
    settings = {k: options.get(k, getattr(DEFAULTS, k)) for k in FEW_SHOT_KEYS if k not in ("examples", "seed")}
    result = few_shot_losses(list(models), options["examples"], model_type=model_type, seed=options.get("seed", 0),
                             progress=not quiet and not as_json, trust_remote_code=trust_remote_code,
                             adapter_base=adapter_base, **settings)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_few_shot(result.to_dict()))


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
