"""The ``cocktail`` command. Thin: every command builds a Recipe or calls the API and prints.

Importing this package must stay light (no torch, no transformers): they are imported inside the
commands that need them, so ``cocktail --help`` answers at once. One module per family of commands:
``merge`` (merge, run, recipe, inspect), ``weights``, ``evaluate`` (eval, sweep); ``options`` holds
the options they share, ``group`` the click group and its error handling.
"""

from cocktail.cli import evaluate, merge, weights  # noqa: F401  (each adds its commands to the group)
from cocktail.cli.group import cli


def main() -> None:
    cli.main()


__all__ = ["cli", "main"]
