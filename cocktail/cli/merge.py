"""``cocktail merge``, ``run``, ``recipe`` and ``inspect``: the commands that plan and write merges.

Each builds a Recipe and hands it to ``cocktail.runner.run``; torch loads only inside the commands.
"""

from __future__ import annotations

import json
import os
import sys

import click

from cocktail.cli.group import VariadicCommand, cli, warn
from cocktail.cli.options import (
    adapter_base_option,
    allow_nonfinite_option,
    dtype_option,
    few_shot_options,
    model_type_option,
    parse_parameter,
    trust_remote_code_option,
    weights_from_options,
)
from cocktail.cli.weights import format_few_shot

METHOD_HELP = ("Merge method: linear (weighted average, default); with --base: task_arithmetic, ties, dare_linear, "
               "dare_ties, breadcrumbs, breadcrumbs_ties, della, della_linear, sce, ram, ramplus_tl, model_stock, "
               "nearswap and arcee_fusion (one model each); slerp (two models, --param t=...); nuslerp (two), "
               "multislerp (base optional); karcher; passthrough (one model). Parameters are mergekit's "
               "(README: Merge methods). Data-aware: regmean (--param alpha=...) and fisher, fitted to statistics "
               "of each model on --examples (--keep for the --base model).")


SHOW_FILES = 3  # weight files named in the "wrote" line; more are summarised


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
    from cocktail.io.provenance import format_weight
    from cocktail.merging.methods import get_method

    weights = ", ".join(format_weight(w) for w in result.weights)
    lines = [format_few_shot(summary["weights_from"], show_notes=False)] if summary.get("weights_from") else []
    if result.dry_run:
        count = sum(summary["shards"].values())
        files = f"{count} safetensors file{'s' if count != 1 else ''}"
        lines.append(f"dry run: nothing written (output {summary['output']} would hold {files})" if summary["output"]
                     else f"dry run: nothing written (no output given; a merge would write {files})")
    for path, w in zip(summary["models"], result.weights):
        lines.append(f"  {format_weight(w):>10}  {path}")
    if summary["base_model"]:
        lines.append(f"  {'base':>10}  {summary['base_model']}")
    dtypes = ", ".join(f"{k} ({v})" for k, v in summary["output_dtypes"].items())
    if summary["method_parameters"]:
        seeded = get_method(summary["method"]).random
        lines.append("parameters: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in summary["method_parameters"].items())
                     + (f" (seed {summary['seed']})" if seeded else ""))
    lines.append(f"method {summary['method']}, weights [{weights}]: {summary['merged_tensors']} tensors merged "
                 f"({_format_count(summary['parameters'])} parameters), {summary['copied_tensors']} copied; "
                 f"dtypes {dtypes}; {summary['output_bytes'] / 1e6:.1f} MB")
    if not result.dry_run:
        weight_files = [f for f in summary["files"] if f.endswith(".safetensors")]
        shown = (", ".join(weight_files) if len(weight_files) <= SHOW_FILES else
                 f"{len(weight_files)} safetensors files: {weight_files[0]} ... {weight_files[-1]}")
        lines.append(f"wrote {summary['output']} ({shown} and {len(summary['files']) - len(weight_files)} side files)")
    click.echo("\n".join(lines))


@cli.command("merge", cls=VariadicCommand)
@click.option("--models", "-m", "models", multiple=True, required=True, metavar="PATH...",
              help="Models to merge: folders, .safetensors files or cached hub ids.")
@click.option("--weights", "-w", "weights", multiple=True, type=float, metavar="W...",
              help="One weight per model, summing to 1 (default: equal weights); with regmean / fisher they "
                   "scale each model's statistics.")
@click.option("--output", "-o", type=click.Path(), help="Output folder (must not exist unless --force).")
@click.option("--method", "method", default="linear", show_default=True, metavar="NAME", help=METHOD_HELP)
@click.option("--base", "base", type=click.Path(), help="Base model, for methods that merge differences from it.")
@adapter_base_option
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A method parameter, e.g. density=0.5, lambda=1, t=0.3 (repeatable; t=0,0.5,1 is a gradient over layers).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random methods (dare_*) and of the few-shot negatives; recorded.")
@model_type_option("What the models are; encoders get BGE sentence-transformers files.")
@dtype_option
@click.option("--normalize", is_flag=True, help="Divide the weights by their sum instead of requiring 1.")
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest output shard, e.g. 2GB, 500MB.")
@click.option("--config-from", type=click.Path(), help="Copy config and tokenizer from this model, not the first.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--dry-run", is_flag=True, help="Run every check and print the plan; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@few_shot_options(with_seed=False)
@trust_remote_code_option
@allow_nonfinite_option
def merge_command(models, weights, output, method, base, adapter_base, params, seed, model_type, dtype, normalize,
                  max_shard_size, config_from, force, dry_run, as_json, quiet, trust_remote_code, allow_nonfinite,
                  **few_shot):
    """Merge checkpoints into a new model folder: a weighted average by default (see --method), with
    fixed weights or weights computed from a few examples (--examples)."""
    from cocktail.io.adapters import bases_for
    from cocktail.recipe.recipe import Recipe
    from cocktail.runner import run

    if not output and not dry_run:
        raise click.UsageError("missing option '--output' (or use --dry-run)")
    parameters = dict(parse_parameter(p) for p in params)
    weights_from = weights_from_options(few_shot)
    from cocktail.recipe.choices import DATA_AWARE_METHODS

    if weights_from and weights and method not in DATA_AWARE_METHODS:
        raise click.UsageError("give either --weights or --examples, not both (only the data-aware methods "
                               f"{', '.join(DATA_AWARE_METHODS)} take both: the weights scale each model's statistics)")
    recipe = Recipe.from_models(models, list(weights) or None, bases_for(models, adapter_base), output=output,
                                model_type=model_type, dtype=dtype, normalize=normalize,
                                max_shard_size=max_shard_size, config_from=config_from,
                                merge_method=method, base_model=base, parameters=parameters, seed=seed,
                                weights_from=weights_from, trust_remote_code=trust_remote_code,
                                allow_nonfinite=allow_nonfinite)
    if _print_recipe_instead(recipe):
        return
    result = run(recipe, force=force, dry_run=dry_run, progress=not quiet and not as_json, on_warning=warn)
    _print_result(result, as_json)


@cli.command("inspect")
@click.argument("models", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@adapter_base_option
def inspect_command(models, as_json, adapter_base):
    """Describe models and say whether they can be merged (exit 1 if not)."""
    from cocktail.merging.inspect import format_report, inspect_models

    report = inspect_models(list(models), adapter_base)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if report.get("mergeable") is False:
        sys.exit(1)


@cli.command("run")
@click.argument("recipe_file", metavar="RECIPE", type=click.Path())
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
@trust_remote_code_option
@allow_nonfinite_option
def run_command(recipe_file, output, overrides, verify, force, dry_run, as_json, quiet, trust_remote_code,
                allow_nonfinite):
    """Run a YAML recipe file (or a merged folder: its cocktail_recipe.yaml).

    \b
    cocktail run my.yaml
    cocktail run my.yaml --output ./elsewhere --dry-run
    cocktail run my.yaml --set dtype=float16 --set models.1.weight=0.3
    cocktail run merged --output again --verify      (merged/cocktail_recipe.yaml)
    """
    from cocktail.errors import DOOR
    from cocktail.recipe.recipe import Recipe, recipe_path
    from cocktail.runner import run

    DOOR.set("recipe")  # options the recipe sets are named by their keys (normalize: true)
    recipe_file = recipe_path(recipe_file)
    recipe = Recipe.from_yaml(recipe_file, overrides, trust_remote_code=trust_remote_code)
    if output:
        recipe.output = os.path.abspath(os.path.expanduser(output))
    if allow_nonfinite:
        recipe.allow_nonfinite = True
    if not recipe.output and not dry_run:
        raise click.UsageError(f"{recipe_file} sets no output: add 'output:' to it or pass --output (or use --dry-run)")
    if verify:
        from cocktail.io.provenance import verify_inputs

        count = verify_inputs(recipe)
        if not as_json:
            click.echo(f"verified: {count} input files (weights, config, tokenizer) match the recipe's sha256", err=True)
    result = run(recipe, force=force, dry_run=dry_run, progress=not quiet and not as_json, on_warning=warn,
                 recipe_file=recipe_file)
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
    from cocktail.recipe.schema import resolve_paths
    from cocktail.runner import check

    recipe.check(os.getcwd())
    check(recipe, on_warning=warn)  # refuse what `cocktail run` would refuse
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
@click.option("--from-mergekit", "mergekit_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Print the cocktail recipe that merges what this mergekit config merges (takes only --output).")
@click.pass_context
def recipe_command(ctx, absolute_paths, mergekit_file, **merge_options):
    """Print a merge command line as a YAML recipe (takes merge's options), or a mergekit config as the
    equivalent cocktail recipe.

    \b
    cocktail recipe --models ./a ./b --weights 0.7 0.3 --output ./merged > my.yaml
    cocktail run my.yaml
    cocktail recipe --from-mergekit mergekit.yml --output ./merged > my.yaml

    Paths are written as given: relative ones are read relative to the recipe file, so save it in
    the current folder, or pass --absolute-paths. A mergekit config's paths are relative to the current
    folder, as mergekit reads them; they are written absolute.
    """
    ctx.meta["cocktail.print_recipe"] = True
    ctx.meta["cocktail.absolute_paths"] = absolute_paths
    if mergekit_file:
        _print_mergekit_recipe(ctx, mergekit_file, merge_options)
        return
    if not merge_options["models"]:
        raise click.UsageError("missing option '--models' (or --from-mergekit FILE)")
    ctx.invoke(merge_command, **merge_options, dry_run=True)


def _print_mergekit_recipe(ctx, mergekit_file: str, merge_options: dict) -> None:
    from pathlib import Path

    from cocktail.recipe.mergekit_config import is_mergekit_config
    from cocktail.recipe.recipe import Recipe
    from cocktail.recipe.yaml_lines import parse_yaml

    given = [p.opts[0] for p in ctx.command.params if p.name in merge_options and p.name != "output"
             and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"--from-mergekit takes the merge from the mergekit config: drop {', '.join(given)}")
    path = Path(mergekit_file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.UsageError(f"--from-mergekit {mergekit_file}: cannot be read ({exc})") from None
    if not is_mergekit_config(parse_yaml(text, mergekit_file)[0]):
        raise click.UsageError(f"{mergekit_file} is not a mergekit config (no merge_method with models given by "
                               f"'model:', nor slices): run a cocktail recipe with cocktail run")
    recipe = Recipe.from_yaml(path)
    if merge_options.get("output"):
        recipe.output = merge_options["output"]
    _print_recipe_instead(recipe)


def _recipe_param(param: click.Parameter) -> click.Parameter:
    """A merge option as ``cocktail recipe`` takes it: ``--output`` is the recipe's output (it has no --force);
    ``--models`` may be left out for ``--from-mergekit``."""
    if param.name == "models":
        copy = click.Option(param.opts, multiple=True, metavar=param.metavar, help=param.help)
        copy.name = param.name
        return copy
    if param.name != "output":
        return param
    return click.Option(param.opts, type=click.Path(), help="The recipe's output folder (cocktail run refuses it if "
                                                            "it exists, unless run with --force).")


recipe_command.params[:0] = [_recipe_param(p) for p in merge_command.params if p.name not in _NOT_RECIPE_OPTIONS]
