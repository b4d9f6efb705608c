"""``cocktail eval`` and ``cocktail sweep``: does the merge help, and the trade-off curve of two models."""

from __future__ import annotations

import json

import click

from cocktail.cli.group import VariadicCommand, cli
from cocktail.cli.options import encode_options, quiet_transformers

EVAL_MODEL_TYPES = ("encoder", "llm-embedder", "llm-reranker")


@cli.command("eval", cls=VariadicCommand)
@click.option("--models", "-m", "models", multiple=True, required=True, metavar="PATH...",
              help="Embedding models to score: folders or cached hub ids.")
@click.option("--model-type", type=click.Choice(EVAL_MODEL_TYPES), default="encoder", show_default=True,
              help="encoder: BERT-style embedder; llm-embedder: decoder embedder (last token, <instruct> prompt); "
                   "llm-reranker: decoder reranker (Yes logit; --query-instruction is its prompt).")
@encode_options
def eval_command(models, model_type, data, query_instruction, split, batch_size, max_length, device, as_json, quiet,
                 trust_remote_code, adapter_base):
    """Score embedding models (or rerankers) on retrieval (nDCG@10, MRR@10, Recall@10/100) and STS (Spearman) data."""
    from cocktail.evaluation.evaluate import evaluate_models, format_table

    quiet_transformers()
    rows = evaluate_models(list(models), list(data), query_instruction, split=split, batch_size=batch_size,
                           max_length=max_length, device=device, progress=not quiet and not as_json,
                           trust_remote_code=trust_remote_code, model_type=model_type, adapter_base=adapter_base)
    click.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))


@cli.command("sweep", cls=VariadicCommand)
@click.option("--models", "-m", "models", multiple=True, required=True, metavar="A B",
              help="The two models; the merge at weight w is w*A + (1-w)*B.")
@click.option("--steps", type=int, default=11, show_default=True, help="Weights from 0 to 1, evenly spaced.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the curves to this PNG file.")
@click.option("--examples", type=click.Path(), help="Few-shot examples (query/pos/neg JSONL): mark the weight "
              "LM-Cocktail's few-shot weighting picks.")
@click.option("--temperature", type=float, default=5.0, show_default=True,
              help="The few-shot softmax temperature for --examples (lower: the losses decide more).")
@encode_options
def sweep_command(models, steps, plot, examples, temperature, data, query_instruction, split, batch_size, max_length,
                  device, as_json, quiet, trust_remote_code, adapter_base):
    """Merge two models in memory at weights 0..1 and score each merge: the trade-off curve."""
    from cocktail.evaluation.evaluate import format_table
    from cocktail.evaluation.sweep import plot_sweep, sweep_weights, table_rows

    if len(models) != 2:
        raise click.UsageError(f"--models takes exactly 2 models, got {len(models)}")
    if plot and not plot.lower().endswith(".png"):
        raise click.UsageError("--plot writes a PNG: give a file name ending in .png")
    if plot:  # fail before the long part if matplotlib is missing
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError("--plot needs matplotlib: pip install 'cocktail[plot]'") from None
    quiet_transformers()
    result = sweep_weights(list(models), list(data), steps, query_instruction, examples, split=split,
                           batch_size=batch_size, max_length=max_length, device=device,
                           progress=not quiet and not as_json, trust_remote_code=trust_remote_code,
                           adapter_base=adapter_base, temperature=temperature)
    if plot:
        plot_sweep(result, plot)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    lines = [f"weight w: w * {models[0]} + (1 - w) * {models[1]}"]
    if result.few_shot_weights is not None:
        lines.append(f"few-shot weights from {examples}: {', '.join(f'{w:.4f}' for w in result.few_shot_weights)}")
    lines += ["", format_table(table_rows(result), row_key="weight", row_header="w")]
    if plot:
        lines += ["", f"wrote {plot}"]
    click.echo("\n".join(lines))
