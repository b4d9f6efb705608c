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
    check_png_option,
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
@click.option("--plot", type=click.Path(dir_okay=False), metavar="PNG",
              help="With --search and --keep: draw every merge evaluated as (keep loss, target loss), the models, "
                   "the softmax start and the chosen weights into this PNG file (--json carries the points).")
@few_shot_options
@trust_remote_code_option
@adapter_base_option
def weights_command(models, model_type, as_json, quiet, plot, trust_remote_code, adapter_base, **few_shot):
    """Each model's loss on a few examples, and the merge weights softmax(-loss / temperature).

    For bge-m3 the loss is the dense one (the CLS embedding), as in LM-Cocktail; its sparse and ColBERT
    head files are merged with the weights found.
    """
    from cocktail.fewshot.weighting import few_shot_losses

    options = weights_from_options(few_shot)
    if options is None:
        raise click.UsageError("missing option '--examples'")
    if plot and not (options.get("search") and options.get("keep")):
        raise click.UsageError("--plot needs --search and --keep (it draws keep loss against target loss)")
    check_png_option("--plot", plot, [*models, options["examples"], options.get("keep"), adapter_base])
    settings = {k: options.get(k, getattr(DEFAULTS, k)) for k in FEW_SHOT_KEYS if k not in ("examples", "seed")}
    result = few_shot_losses(list(models), options["examples"], model_type=model_type, seed=options.get("seed", 0),
                             progress=not quiet and not as_json, trust_remote_code=trust_remote_code,
                             adapter_base=adapter_base, **settings)
    data = result.to_dict()
    if plot:
        from cocktail.fewshot.frontier import plot_search_frontier

        plot_search_frontier(data, plot)
    click.echo(json.dumps(data, indent=2) if as_json else format_few_shot(data) + (f"\nwrote {plot}" if plot else ""))


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.6g}"


def _weight(value) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) else "per group"


def _weights(values) -> str:
    return "[" + ", ".join(f"{w:.4f}" for w in values) + "]"


def format_few_shot(data: dict, show_notes: bool = True) -> str:
    """The table of loss and weight per model, and what the search found."""
    search = data.get("search")
    held = data.get("holdout_losses")
    keep = data.get("keep_losses")
    keep_held = data.get("keep_holdout_losses")
    columns = [("loss", data["losses"])]
    if held:
        columns.append(("holdout", held))
    if keep:
        columns.append(("keep loss", keep))
    if keep_held:
        columns.append(("keep hold", keep_held))
    show_softmax = bool(held or keep)
    lines = ["  " + "  ".join(f"{name:>10}" for name, _ in columns)
             + (f"  {'softmax w':>10}" if show_softmax else "") + f"  {'weight':>10}  model"]
    for i, model in enumerate(data["models"]):
        lines.append("  " + "  ".join(f"{_number(values[i]):>10}" for _, values in columns)
                     + (f"  {data['softmax_weights'][i]:>10.6g}" if show_softmax else "")
                     + f"  {_weight(data['weights'][i]):>10}  {model}")
    tasks = f", tasks {', '.join(data['tasks'])}" if data.get("tasks") else ""
    lines.append(f"{data['model_type']} loss on {data['examples']} examples ({data['examples_source']}{tasks}); "
                 f"temperature {data['temperature']:g}, seed {data['seed']}, neg_number {data['neg_number']}, "
                 f"batch_size {data['batch_size']}, max_length {data['max_length']}"
                 + (f", pooling {data['pooling']}" if data.get("pooling") else "") + f", device {data['device']}"
                 + f", {data.get('score_dtype', 'float32')}"
                 + (f", device map {data['device_map']}" if data.get("device_map") else ""))
    if data.get("keep_source"):
        rule = (f"trade-off: loss + {data['keep_weight']:g} * keep loss" if data.get("keep_weight") is not None
                else f"tolerance {data['keep_tolerance']:g} above the best model's keep loss")
        lines.append(f"keep loss on {data['keep_examples']} examples ({data['keep_source']})"
                     + (f"; search rule: {rule}" if search else ""))
    if search:
        lines.append(f"search: {search['evaluations']} merged models evaluated (budget {search['budget']}) on "
                     f"{search['fit_examples']} examples, {search['holdout_examples']} held out"
                     + (f"; keep set {search['keep_examples']}, {search['keep_holdout_examples']} held out"
                        if search.get("keep_examples") else "")
                     + (f"; search space {search['search_space']}" if search.get("search_space", "models") != "models"
                        else ""))

        def losses(prefix: str) -> str:
            text = f"loss {_number(search[prefix + 'loss'])}, holdout {_number(search[prefix + 'holdout_loss'])}"
            if search.get("keep_examples"):
                text += (f"; keep loss {_number(search[prefix + 'keep_loss'])}, "
                         f"holdout {_number(search[prefix + 'keep_holdout_loss'])}")
            return text

        lines.append(f"  softmax weights  {_weights(search['start_weights'])}: {losses('start_')}")
        if search.get("group_weights"):
            lines.append(f"  searched weights per layer group: {losses('')}")
            for group, weights in zip(search["layer_groups"], search["group_weights"]):
                first, last = group["layers"]
                extra = f" + {group['with']}" if group.get("with") else ""
                lines.append(f"    layers {first}-{last}{extra} ({group['tensors']} tensors): {_weights(weights)}")
        else:
            lines.append(f"  searched weights {_weights(search['weights'])}: {losses('')}")
        objective = search.get("objective") or {}
        if objective.get("keep_limit") is not None:
            allowed = "within" if search["keep_loss"] <= objective["keep_limit"] else "OVER"
            lines.append(f"  keep loss limit {objective['keep_limit']:.6g}: the answer is {allowed} it")
        gain = search["improvement"]
        held_gain = (None if search["holdout_loss"] is None
                     else search["start_holdout_loss"] - search["holdout_loss"])
        change = (f"lower the loss by {gain:.6g}" if gain >= 0 or not search.get("keep_examples") else
                  f"raise the loss by {-gain:.6g} (the softmax weights lose too much of the keep set)")
        lines.append(f"  the searched weights {change} on the searched examples"
                     + ("" if held_gain is None else f" and by {held_gain:.6g} on the held-out ones"
                        + (" (worse: overfitting)" if held_gain < 0 else "")))
    for note in (data.get("notes") or []) if show_notes else []:
        lines.append(f"note: {note}")
    return "\n".join(lines)
