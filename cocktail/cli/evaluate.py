"""``cocktail eval`` and ``cocktail sweep``: does the merge help, and the trade-off curve of two models."""

from __future__ import annotations

import json

import click

from cocktail.cli.group import VariadicCommand, cli, fail
from cocktail.cli.options import check_png_option, encode_options, parse_parameter, quiet_transformers

EVAL_MODEL_TYPES = ("encoder", "llm-embedder", "reranker", "llm-reranker")
MODEL_TYPE_HELP = ("encoder: BERT-style embedder (bge-m3, with its colbert_linear.pt and sparse_linear.pt, is scored "
                   "in each mode: dense, sparse, colbert, hybrid); llm-embedder: decoder embedder (last token, "
                   "<instruct> prompt); reranker: cross-encoder (one logit, as FlagReranker); llm-reranker: decoder "
                   "reranker (Yes logit; --query-instruction is its prompt).")


@cli.command("eval", cls=VariadicCommand)
@click.option("--models", "-m", "models", multiple=True, required=True, metavar="PATH...",
              help="Embedding models or rerankers to score: folders or cached hub ids.")
@click.option("--model-type", type=click.Choice(EVAL_MODEL_TYPES), default=None,
              help=MODEL_TYPE_HELP + " Default: what each model's config.json says.")
@click.option("--candidates", type=click.Path(dir_okay=False), metavar="RUN",
              help="Rerankers on a BEIR folder: each query's candidates from this TREC run file "
                   "(qid Q0 docid rank score tag).")
@click.option("--retriever", metavar="MODEL", help="Rerankers on a BEIR folder: the candidates are this embedder's "
              "top-k (computed once for every reranker; its own scores are shown as the first stage).")
@click.option("--top-k", type=int, default=100, show_default=True, help="Candidates per query a reranker reranks.")
@encode_options
def eval_command(models, model_type, candidates, retriever, top_k, data, query_instruction, split, batch_size,
                 hybrid_weights, max_length, device, as_json, quiet, trust_remote_code, adapter_base, **scoring):
    """Score embedding models (or rerankers) on retrieval (nDCG@10, MRR@10, Recall@10/100) and STS (Spearman) data."""
    from cocktail.evaluation.evaluate import EvalInterrupted, evaluate_models, format_table

    quiet_transformers()
    try:
        rows = evaluate_models(list(models), list(data), query_instruction, split=split, batch_size=batch_size,
                               max_length=max_length, device=device, progress=not quiet and not as_json,
                               trust_remote_code=trust_remote_code, model_type=model_type,
                               adapter_base=adapter_base, candidates=candidates, retriever=retriever, top_k=top_k,
                               hybrid_weights=hybrid_weights, **scoring)
    except EvalInterrupted as stop:  # keep what was scored: a Ctrl-C after an hour loses only the model it was on
        if stop.rows:
            click.echo(json.dumps(stop.rows, indent=2) if as_json
                       else "partial results (interrupted):\n\n" + format_table(stop.rows))
        done = "the scores finished before it are above" if stop.rows else "no score was finished"
        fail(f"interrupted while scoring {stop.where}; {done}", 130)
    click.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))


@cli.command("sweep", cls=VariadicCommand)
@click.option("--models", "-m", "models", multiple=True, required=True, metavar="A B",
              help="The two models; the merge at weight w is w*A + (1-w)*B.")
@click.option("--steps", type=int, default=11, show_default=True, help="Weights from 0 to 1, evenly spaced.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the curves to this PNG file.")
@click.option("--frontier-plot", type=click.Path(dir_okay=False), metavar="PNG",
              help="Write the measured frontier to this PNG file: the first --data set (the target) on y "
                   "against each other one (a general skill) on x, one point per weight.")
@click.option("--examples", type=click.Path(), help="Few-shot examples (query/pos/neg JSONL): mark the weight "
              "LM-Cocktail's few-shot weighting picks (from the dense loss, for bge-m3).")
@click.option("--temperature", type=float, default=5.0, show_default=True,
              help="The few-shot softmax temperature for --examples (lower: the losses decide more).")
@click.option("--model-type", type=click.Choice(EVAL_MODEL_TYPES), default=None,
              help=MODEL_TYPE_HELP + " Default: what each model's config.json says.")
@click.option("--mode", type=click.Choice(("dense", "sparse", "colbert", "hybrid")), default=None,
              help="The retrieval mode --plot draws for bge-m3 (default: dense; the table shows every mode).")
@click.option("--method", default="linear", show_default=True, metavar="NAME",
              help="linear, or a data-aware method (regmean, fisher) fitted to statistics of each model on "
                   "--examples (--keep for the --base model): the weights then scale the statistics.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A parameter of --method, e.g. alpha=0.5.")
@click.option("--base", type=click.Path(), help="With --keep: which of the two models is the base.")
@click.option("--keep", type=click.Path(dir_okay=False), metavar="FILE",
              help="With a data-aware --method: the examples of the --base model's statistics.")
@encode_options
def sweep_command(models, steps, plot, frontier_plot, examples, temperature, model_type, mode, method, params, base,
                  keep, data, query_instruction, split,
                  batch_size, hybrid_weights, max_length, device, as_json, quiet, trust_remote_code, adapter_base,
                  **scoring):
    """Merge two models in memory at weights 0..1 and score each merge: the trade-off curve."""
    from cocktail.evaluation.evaluate import format_table
    from cocktail.evaluation.sweep import plot_frontier, plot_sweep, sweep_weights, table_rows

    if len(models) != 2:
        raise click.UsageError(f"--models takes exactly 2 models, got {len(models)}")
    inputs = [*models, *data, examples, keep, base]
    check_png_option("--plot", plot, inputs)
    check_png_option("--frontier-plot", frontier_plot, inputs)
    if frontier_plot and len(data) < 2:
        raise click.UsageError("--frontier-plot needs at least 2 --data sets: the target first, then general ones")
    if mode and not (plot or frontier_plot):
        raise click.UsageError("--mode picks the retrieval mode --plot or --frontier-plot draws (the table shows "
                               "every mode): give one of them")
    quiet_transformers()
    result = sweep_weights(list(models), list(data), steps, query_instruction, examples, split=split,
                           batch_size=batch_size, max_length=max_length, device=device,
                           progress=not quiet and not as_json, trust_remote_code=trust_remote_code,
                           adapter_base=adapter_base, model_type=model_type, temperature=temperature,
                           mode=mode, hybrid_weights=hybrid_weights, method=method,
                           parameters=dict(parse_parameter(p) for p in params), keep=keep, base=base,
                           **scoring)
    if plot:
        plot_sweep(result, plot, mode=mode)
    if frontier_plot:
        plot_frontier(result, frontier_plot, mode=mode)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    merge = "w * {} + (1 - w) * {}" if method == "linear" else f"{method} of {{}} (weight w) and {{}} (1 - w)"
    lines = ["weight w: " + merge.format(models[0], models[1])]
    if result.few_shot_weights is not None:
        lines.append(f"few-shot weights from {examples}: {', '.join(f'{w:.4f}' for w in result.few_shot_weights)}")
    lines += ["", format_table(table_rows(result), row_key="weight", row_header="w")]
    lines += [f"wrote {path}" for path in (plot, frontier_plot) if path]
    click.echo("\n".join(lines))
