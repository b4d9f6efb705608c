"""The ``cocktail`` command. Thin: every command builds a Recipe or calls the API and prints.

Importing this module must stay light (no torch, no transformers): they are imported inside the
commands that need them, so ``cocktail --help`` answers at once.
"""

from __future__ import annotations

import json
import re
import sys

import click

from .cli_fewshot import few_shot_options, format_few_shot, weights_from_options
from .errors import CocktailError
from .version import __version__

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
    """


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
    weights = ", ".join(f"{w:.6g}" for w in result.weights)
    lines = [format_few_shot(summary["weights_from"], show_notes=False)] if summary.get("weights_from") else []
    if result.dry_run:
        lines.append(f"dry run: nothing written (output would be {summary['output'] or 'not set'})")
    for path, w in zip(summary["models"], result.weights):
        lines.append(f"  {w:>10.6g}  {path}")
    if summary["base_model"]:
        lines.append(f"  {'base':>10}  {summary['base_model']}")
    dtypes = ", ".join(f"{k} ({v})" for k, v in summary["output_dtypes"].items())
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
@few_shot_options
def merge_command(models, weights, output, model_type, dtype, normalize, max_shard_size, config_from, force,
                  dry_run, as_json, quiet, **few_shot):
    """Merge checkpoints into a new model folder, with fixed weights or weights computed from examples."""
    from .recipe import Recipe
    from .runner import run

    if not output and not dry_run:
        raise click.UsageError("missing option '--output' (or use --dry-run)")
    weights_from = weights_from_options(few_shot)
    if weights_from and weights:
        raise click.UsageError("give either --weights or --examples, not both")
    recipe = Recipe.from_models(models, list(weights) or None, output=output, model_type=model_type, dtype=dtype,
                                normalize=normalize, max_shard_size=max_shard_size, config_from=config_from,
                                weights_from=weights_from)
    result = run(recipe, force=force, dry_run=dry_run, progress=not quiet and not as_json, on_warning=_warn)
    _print_result(result, as_json)


@cli.command("inspect")
@click.argument("models", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_command(models, as_json):
    """Describe models and say whether they can be merged (exit 1 if not)."""
    from .report import format_report, inspect_models

    report = inspect_models(list(models))
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if report.get("mergeable") is False:
        sys.exit(1)


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
    from .fewshot import FewShotOptions, few_shot_losses

    options = weights_from_options(few_shot)
    if options is None:
        raise click.UsageError("missing option '--examples'")
    defaults = FewShotOptions()
    settings = {k: options.get(k, getattr(defaults, k)) for k in ("temperature", "query_instruction", "neg_number",
                "batch_size", "max_length", "device", "task", "search", "search_budget", "holdout")}
    result = few_shot_losses(list(models), options["examples"], model_type=model_type, seed=options.get("seed", 0),
                             progress=not quiet and not as_json, **settings)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_few_shot(result.to_dict()))


def main() -> None:
    cli.main()


if __name__ == "__main__":
    main()
