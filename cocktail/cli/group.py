"""The ``cocktail`` click group: one ``error:`` line and exit 2 for every bad input, ``--debug`` for
tracebacks, SIGTERM cleaned up like Ctrl-C, and ``--models a b c`` taking several values."""

from __future__ import annotations

import os
import re
import sys
import warnings

import click

from cocktail.errors import DOOR, LINE_LIMIT, CocktailError, CocktailWarning, cut
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
        if debug:  # --debug may come before or after the command; click knows it only before
            argv = ["--debug"] + [a for a in argv if a != "--debug"]
        # transformers' own warnings are noise next to cocktail's one-line messages (set it to see them)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        _interrupt_on_sigterm()
        door = DOOR.set("cli")  # messages name options as flags (--force), not as Python arguments
        shown = warnings.showwarning
        warnings.showwarning = _one_line(shown)
        try:
            code = super().main(args=argv, prog_name=prog_name or "cocktail", standalone_mode=False, **extra)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            fail(f"{exc.format_message()}{hint}", 2)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code or 2)
        except (click.Abort, KeyboardInterrupt):
            fail("interrupted; nothing was written", 130)
        except CocktailError as exc:
            if debug:
                raise
            fail(str(exc), exc.exit_code)
        except Exception as exc:  # a bug of ours: still one line, the traceback behind --debug
            if debug:
                raise
            fail(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)
        finally:  # a caller that runs the CLI in-process (a test, a notebook) keeps its own door and warnings
            DOOR.reset(door)
            warnings.showwarning = shown
        sys.exit(code if isinstance(code, int) else 0)


def _one_line(shown):
    """cocktail's own warnings as ``warning: ...`` lines, like its errors; others as Python shows them."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CocktailWarning):
            warn(str(message))
        else:
            shown(message, category, filename, lineno, file, line)
    return show


def _interrupt_on_sigterm() -> None:
    """A killed merge cleans up like an interrupted one: its temporary output folder is removed."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def fail(message: str, code: int) -> None:
    """One ``error:`` line, cut to LINE_LIMIT characters however long the values it quotes."""
    click.echo(f"error: {cut(' '.join(str(message).split()), LINE_LIMIT)}", err=True)
    sys.exit(code)


def warn(message: str) -> None:
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
