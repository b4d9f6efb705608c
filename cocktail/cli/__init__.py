"""The ``cocktail`` command. Thin: every command builds a Recipe or calls the API and prints.

Importing this module must stay light (no torch, no transformers): they are imported inside the
commands that need them, so ``cocktail --help`` answers at once.
"""

from __future__ import annotations

import json
import re
import sys

import click

from cocktail.cli.fewshot_options import few_shot_options, format_few_shot, weights_from_options
from cocktail.errors import CocktailError
from cocktail.version import __version__

NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def expand_variadic(args: list[str], names: set[str]) -> list[str]:
    """Let ``--models a b c`` mean ``--models a --models b --models c`` (negative numbers are values)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        out.append(token)
        i += 1
        if token == "--":
            out += args[i:]
            break
        if token in names:
            values = []
            while i < len(args) and (not args[i].startswith("-") or NUMBER.match(args[i])):
                values.append(args[i])
                i += 1
            for n, value in enumerate(values):
                if n:
                    out.append(token)
                out.append(value)
    return out


class VariadicCommand(click.Command):
    """A command whose ``multiple=True`` options also take several values after one flag."""

    def parse_args(self, ctx, args):
        names = {opt for p in self.params if isinstance(p, click.Option) and p.multiple for opt in p.opts}
        return super().parse_args(ctx, expand_variadic(list(args), names))


class CocktailGroup(click.Group):
    """Errors become one ``error:`` line on stderr with exit code 2 (tracebacks only with --debug)."""

    def main(self, args=None, prog_name=None, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv
        _interrupt_on_sigterm()
        try:
            code = super().main(args=argv, prog_name=prog_name or "cocktail", standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(f"{exc.format_message()}{hint}", 2)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code or 2)
        except (click.Abort, KeyboardInterrupt):
            _fail("interrupted; nothing was written", 130)
        except CocktailError as exc:
            if debug:
                raise
            _fail(str(exc), exc.exit_code)
        except Exception as exc:  # a bug of ours: still one line, the traceback behind --debug
            if debug:
                raise
            _fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)
        sys.exit(code if isinstance(code, int) else 0)


def _interrupt_on_sigterm() -> None:
    """A killed merge cleans up like an interrupted one: its temporary output folder is removed."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


@click.group(cls=CocktailGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cocktail")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
def cli(debug: bool) -> None:
    """Merge fine-tuned transformer checkpoints into one model, the LM-Cocktail way.

    \b
    cocktail merge --models ./bge-inst ./bge-no-inst --weights 0.5 0.5 --output ./merged
    cocktail inspect ./bge-inst ./bge-no-inst
    cocktail run recipes/bge-instruction-merge.yaml
    """


METHOD_HELP = ("Merge method: linear (weighted average, default), task_arithmetic, ties, dare_linear, dare_ties "
               "(these need --base), slerp (two models, --param t=...), model_stock (needs --base).")


def parse_parameter(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> ``(key, value)``: a number, a comma list of numbers (a gradient over layers),
    JSON (``[...]`` or ``{...}``, e.g. filter entries), or else the text itself."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="'--param'")
    if NUMBER.match(raw):
        return key, int(raw) if re.fullmatch(r"-?\d+", raw) else float(raw)
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) > 1 and all(NUMBER.match(p) for p in parts):
        return key, [float(p) for p in parts]
    if raw[:1] in "[{":
        try:
            return key, json.loads(raw)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"{key}: {raw!r} is not valid JSON ({exc.msg})", param_hint="'--param'") from None
    return key, raw


def _format_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _print_result(result, as_json: bool) -> None:
    summary = result.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    from cocktail.io.provenance import format_weight as _format_weight

    weights = ", ".join(_format_weight(w) for w in result.weights)
    lines = [format_few_shot(summary["weights_from"], show_notes=False)] if summary.get("weights_from") else []
    if result.dry_run:
        lines.append(f"dry run: nothing written (output would be {summary['output'] or 'not set'})")
    for path, w in zip(summary["models"], result.weights):
        lines.append(f"  {_format_weight(w):>10}  {path}")
    if summary["base_model"]:
        lines.append(f"  {'base':>10}  {summary['base_model']}")
    dtypes = ", ".join(f"{k} ({v})" for k, v in summary["output_dtypes"].items())
    if summary["method_parameters"]:
        lines.append("parameters: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in summary["method_parameters"].items())
                     + f" (seed {summary['seed']})")
    lines.append(f"method {summary['method']}, weights [{weights}]: {summary['merged_tensors']} tensors merged "
                 f"({_format_count(summary['parameters'])} parameters), {summary['copied_tensors']} copied; "
                 f"dtypes {dtypes}; {summary['output_bytes'] / 1e6:.1f} MB")
    if not result.dry_run:
        weight_files = [f for f in summary["files"] if f.endswith(".safetensors")]
        lines.append(f"wrote {summary['output']} ({', '.join(weight_files)} and {len(summary['files']) - len(weight_files)} side files)")
    click.echo("\n".join(lines))


@cli.command("merge", cls=VariadicCommand)
@click.option("--models", "-m", "models", multiple=True, required=True, metavar="PATH...",
              help="Models to merge: folders, .safetensors files or cached hub ids.")
@click.option("--weights", "-w", "weights", multiple=True, type=float, metavar="W...",
              help="One weight per model, summing to 1 (default: equal weights).")
@click.option("--output", "-o", type=click.Path(), help="Output folder (must not exist unless --force).")
@click.option("--method", "method", default="linear", show_default=True, metavar="NAME", help=METHOD_HELP)
@click.option("--base", "base", type=click.Path(), help="Base model, for methods that merge differences from it.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A method parameter, e.g. density=0.5, lambda=1, t=0.3 (repeatable; t=0,0.5,1 is a gradient over layers).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random methods (dare_*) and of the few-shot negatives; recorded.")
@click.option("--model-type", type=click.Choice(["encoder", "reranker", "decoder"]), default="encoder",
              show_default=True, help="What the models are; encoders get BGE sentence-transformers files.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
              help="Output dtype (default: each tensor's dtype in the first model).")
@click.option("--normalize", is_flag=True, help="Divide the weights by their sum instead of requiring 1.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest output shard, e.g. 2GB, 500MB.")
@click.option("--config-from", type=click.Path(), help="Copy config and tokenizer from this model, not the first.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--dry-run", is_flag=True, help="Run every check and print the plan; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@few_shot_options(with_seed=False)
def merge_command(models, weights, output, method, base, params, seed, model_type, dtype, normalize, max_shard_size,
                  config_from, force, dry_run, as_json, quiet, **few_shot):
    """Merge checkpoints into a new model folder: a weighted average by default (see --method), with
    fixed weights or weights computed from a few examples (--examples)."""
    from cocktail.recipe.recipe import Recipe
    from cocktail.runner import run

    if not output and not dry_run:
        raise click.UsageError("missing option '--output' (or use --dry-run)")
    parameters = dict(parse_parameter(p) for p in params)
    weights_from = weights_from_options(few_shot)
    if weights_from and weights:
        raise click.UsageError("give either --weights or --examples, not both")
    recipe = Recipe.from_models(models, list(weights) or None, output=output, model_type=model_type, dtype=dtype,
                                normalize=normalize, max_shard_size=max_shard_size, config_from=config_from,
                                merge_method=method, base_model=base, parameters=parameters, seed=seed,
                                weights_from=weights_from)
    if _print_recipe_instead(recipe):
        return
    result = run(recipe, force=force, dry_run=dry_run, progress=not quiet and not as_json, on_warning=_warn)
    _print_result(result, as_json)


@cli.command("inspect")
@click.argument("models", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_command(models, as_json):
    """Describe models and say whether they can be merged (exit 1 if not)."""
    from cocktail.merging.inspect import format_report, inspect_models

    report = inspect_models(list(models))
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if report.get("mergeable") is False:
        sys.exit(1)


@cli.command("run")
@click.argument("recipe_file", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(),
              help="Write here instead of the recipe's output (relative to the current folder).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, read as YAML: dtype=float16, models.1.weight=0.3, "
                   "parameters.density=0.5 (paths stay relative to the recipe file). Repeatable.")
@click.option("--verify", is_flag=True,
              help="First check the inputs' sha256 against the recipe's provenance; refuse if one changed.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--dry-run", is_flag=True, help="Run every check and print the plan; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def run_command(recipe_file, output, overrides, verify, force, dry_run, as_json, quiet):
    """Run a YAML recipe file (or a merged folder's cocktail_recipe.yaml).

    \b
    cocktail run my.yaml
    cocktail run my.yaml --output ./elsewhere --dry-run
    cocktail run my.yaml --set dtype=float16 --set models.1.weight=0.3
    cocktail run merged/cocktail_recipe.yaml --output again --verify
    """
    import os

    from cocktail.recipe.recipe import Recipe
    from cocktail.runner import run

    recipe = Recipe.from_yaml(recipe_file, overrides)
    if output:
        recipe.output = os.path.abspath(os.path.expanduser(output))
    if not recipe.output and not dry_run:
        raise click.UsageError(f"{recipe_file} sets no output: add 'output:' to it or pass --output (or use --dry-run)")
    if verify:
        from cocktail.io.verify import verify_inputs

        count = verify_inputs(recipe)
        if not as_json:
            click.echo(f"verified: {count} input weight files match the recipe's sha256", err=True)
    result = run(recipe, force=force, dry_run=dry_run, progress=not quiet and not as_json, on_warning=_warn)
    _print_result(result, as_json)


RECIPE_HEADER = """\
# A cocktail recipe: run it with `cocktail run <this file>`.
# Relative paths are relative to this file's folder. Schema: "Recipes" in cocktail's README.
"""


def _print_recipe_instead(recipe) -> bool:
    """Inside ``cocktail recipe``: check ``recipe`` and print it as YAML instead of merging."""
    ctx = click.get_current_context()
    if not ctx.meta.get("cocktail.print_recipe"):
        return False
    import os

    from cocktail.recipe.schema import resolve_paths

    recipe.check(os.getcwd())
    data = recipe.to_dict()
    if ctx.meta.get("cocktail.absolute_paths"):
        data = resolve_paths(data, os.getcwd())
    from cocktail.io.provenance import dump_yaml

    click.echo(RECIPE_HEADER + dump_yaml(data), nl=False)
    return True


# ``cocktail recipe`` takes every option of ``cocktail merge`` except those about running it.
_NOT_RECIPE_OPTIONS = {"force", "dry_run", "as_json", "quiet"}


@cli.command("recipe", cls=VariadicCommand)
@click.option("--absolute-paths", is_flag=True,
              help="Write absolute paths (the recipe then runs from any folder); default: as given.")
@click.pass_context
def recipe_command(ctx, absolute_paths, **merge_options):
    """Print a merge command line as a YAML recipe (takes merge's options).

    \b
    cocktail recipe --models ./a ./b --weights 0.7 0.3 --output ./merged > my.yaml
    cocktail run my.yaml

    Paths are written as given: relative ones are read relative to the recipe file, so save it in
    the current folder, or pass --absolute-paths.
    """
    ctx.meta["cocktail.print_recipe"] = True
    ctx.meta["cocktail.absolute_paths"] = absolute_paths
    ctx.invoke(merge_command, **merge_options, dry_run=True)


recipe_command.params[:0] = [p for p in merge_command.params if p.name not in _NOT_RECIPE_OPTIONS]


@cli.command("weights", cls=VariadicCommand)
@click.option("--models", "-m", "models", multiple=True, required=True, metavar="PATH...",
              help="Models to score: folders, .safetensors files or cached hub ids.")
@click.option("--model-type", type=click.Choice(["encoder", "reranker", "decoder"]), default="encoder",
              show_default=True, help="What the models are: embedder, one-logit cross-encoder, causal LM.")
@click.option("--json", "as_json", is_flag=True, help="Print {\"models\", \"losses\", \"weights\", ...} as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@few_shot_options
def weights_command(models, model_type, as_json, quiet, **few_shot):
    """Each model's loss on a few examples, and the merge weights softmax(-loss / temperature)."""
    from cocktail.fewshot.weighting import FewShotOptions, few_shot_losses

    options = weights_from_options(few_shot)
    if options is None:
        raise click.UsageError("missing option '--examples'")
    defaults = FewShotOptions()
    settings = {k: options.get(k, getattr(defaults, k)) for k in ("temperature", "query_instruction", "neg_number",
                "batch_size", "max_length", "device", "task", "search", "search_budget", "holdout")}
    result = few_shot_losses(list(models), options["examples"], model_type=model_type, seed=options.get("seed", 0),
                             progress=not quiet and not as_json, **settings)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_few_shot(result.to_dict()))


def _encode_options(fn):
    """Options shared by ``eval`` and ``sweep``: how data is read and texts are encoded."""
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")(fn)
    fn = click.option("--device", help="Where to run the models (default: cuda when present, else cpu).")(fn)
    fn = click.option("--max-length", type=click.IntRange(min=1), default=512, show_default=True,
                      help="Longest input in tokens (also capped by the model).")(fn)
    fn = click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                      help="Texts per forward pass.")(fn)
    fn = click.option("--split", default="test", show_default=True, help="qrels split of BEIR folders.")(fn)
    fn = click.option("--query-instruction", help="Text put before every query (not before passages).")(fn)
    fn = click.option("--data", "-d", "data", multiple=True, required=True, metavar="PATH...",
                      help="BEIR folders, query/pos/neg .jsonl files, STS .tsv/.csv files (may be .gz).")(fn)
    return fn


def _quiet_transformers() -> None:
    """No "Loading weights" bars from transformers: cocktail shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@cli.command("eval", cls=VariadicCommand)
@click.option("--models", "-m", "models", multiple=True, required=True, metavar="PATH...",
              help="Embedding models to score: folders or cached hub ids.")
@_encode_options
def eval_command(models, data, query_instruction, split, batch_size, max_length, device, as_json, quiet):
    """Score embedding models on retrieval (nDCG@10, MRR@10, Recall@10/100) and STS (Spearman) data."""
    from cocktail.evaluation.evaluate import evaluate_models, format_table

    _quiet_transformers()
    rows = evaluate_models(list(models), list(data), query_instruction, split=split, batch_size=batch_size,
                           max_length=max_length, device=device, progress=not quiet and not as_json)
    click.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))


@cli.command("sweep", cls=VariadicCommand)
@click.option("--models", "-m", "models", multiple=True, required=True, metavar="A B",
              help="The two models; the merge at weight w is w*A + (1-w)*B.")
@click.option("--steps", type=int, default=11, show_default=True, help="Weights from 0 to 1, evenly spaced.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the curves to this PNG file.")
@click.option("--examples", type=click.Path(), help="Few-shot examples (query/pos/neg JSONL): mark the weight "
              "LM-Cocktail's few-shot weighting picks.")
@_encode_options
def sweep_command(models, steps, plot, examples, data, query_instruction, split, batch_size, max_length, device,
                  as_json, quiet):
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
    _quiet_transformers()
    result = sweep_weights(list(models), list(data), steps, query_instruction, examples, split=split,
                           batch_size=batch_size, max_length=max_length, device=device,
                           progress=not quiet and not as_json)
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


def main() -> None:
    cli.main()


if __name__ == "__main__":
    main()
