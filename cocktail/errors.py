"""The errors cocktail raises on purpose.

Every failure a user can cause (a missing folder, incompatible models, an output that already
exists) is a :class:`CocktailError` whose message is one line that says what is wrong and where.
The CLI prints it as ``error: <message>`` and exits with status 2; the Python API raises it.
:func:`few_names` gives every list in a message the same shape.
"""

SHOW = 4  # names shown in a message before "and N more"


def few_names(items, show: int = SHOW) -> str:
    """The first ``show`` names, then how many more: ``a, b, c, d (and 9 more)``."""
    items = list(items)
    shown = ", ".join(items[:show])
    return shown + (f" (and {len(items) - show} more)" if len(items) > show else "")


class CocktailError(Exception):
    """Base class of every error cocktail raises for bad input or an impossible merge."""

    exit_code = 2


class InputError(CocktailError):
    """A model, file or argument given by the user cannot be used as it is."""


class IncompatibleModelsError(CocktailError):
    """The models cannot be merged: architecture, tensor names or shapes differ."""


class OutputError(CocktailError):
    """The output location cannot be written safely (exists, is an input, ...)."""


class RecipeError(InputError):
    """A recipe file (or a ``--set`` override) does not follow the recipe schema.

    ``problems`` lists every problem found, each naming its key path (``models[1].weight``) and,
    where the YAML parser knows it, the file and line.
    """

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class InputChangedError(InputError):
    """An input of a recipe is no longer the file its provenance recorded (``--verify``)."""
