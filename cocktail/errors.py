"""The errors cocktail raises on purpose.

Every failure a user can cause (a missing folder, incompatible models, an output that already
exists) is a :class:`CocktailError` whose message is one line that says what is wrong and where.
The CLI prints it as ``error: <message>`` and exits with status 2; the Python API raises it.
:func:`few_names` gives every list in a message the same shape, :func:`quoted` and :func:`cut`
shorten every value quoted from an input, :func:`did_you_mean` every near-miss the same hint; :func:`warn` issues the warnings a
merge that went ahead gives, pointing at the user's own line.
"""

import contextlib
import contextvars
import difflib
import os
import reprlib
import sys
import warnings

SHOW = 4  # names shown in a message before "and N more"
QUOTE_LIMIT = 200  # characters of one value quoted from an input
LINE_LIMIT = 2000  # characters of a whole error line
PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` if it is at most ``limit`` characters, else its start and how long it is: a value from
    an input (a tensor name, a config value) of 30 MB must not make a 30 MB message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class _ShortRepr(reprlib.Repr):
    """``repr`` that never builds more than a short text, however large the value."""

    def __init__(self, limit: int):
        super().__init__()
        self.maxstring = self.maxother = limit
        self.maxlong = 40
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = SHOW
        self.maxlevel = 3

    def repr_int(self, value, level):
        try:
            return super().repr_int(value, level)
        except ValueError:  # more digits than Python converts to text
            return f"<an integer of {int(value.bit_length() * 0.30103) + 1:,} digits>"

    def repr_str(self, value, level):
        text = super().repr_str(value, level)
        return text if len(value) <= self.maxstring else f"{text} ({len(value):,} characters)"


def quoted(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters (see :func:`cut`): strings are
    shown by their start and end, lists and mappings by their first items, huge integers by their size."""
    text = _ShortRepr(limit).repr(value)
    return text if len(text) <= 2 * limit else text[:2 * limit] + "..."


def few_names(items, show: int = SHOW) -> str:
    """The first ``show`` names (each cut, see :func:`cut`), then how many more: ``a, b, c, d (and 9 more)``."""
    items = list(items)
    shown = ", ".join(cut(str(item)) for item in items[:show])
    return shown + (f" (and {len(items) - show} more)" if len(items) > show else "")


#: Which door the user came in by: "python" (the API), "cli" (cocktail merge / weights / eval ...) or
#: "recipe" (cocktail run). Messages name options the way that door spells them.
DOOR: contextvars.ContextVar[str] = contextvars.ContextVar("cocktail_door", default="python")

#: option -> (command line, recipe file run by `cocktail run`, Python API)
SPELLINGS = {
    "force": ("--force", "--force", "force=True"),
    "normalize": ("--normalize", "normalize: true", "normalize=True"),
    "base": ("--base", "base_model:", "base="),
    "weights": ("--weights", "models[i].weight", "weights="),
    "dtype": ("--dtype", "dtype:", "dtype="),
    "method": ("--method", "merge_method:", "method="),
    "model_type": ("--model-type", "model_type:", "model_type="),
    "max_length": ("--max-length", "weights_from.max_length", "max_length="),
    "task": ("--task", "weights_from.task", "task="),
    "verify": ("--verify", "--verify", "verify=True"),
    "allow_nonfinite": ("--allow-nonfinite", "allow_nonfinite: true", "allow_nonfinite=True"),
    "temperature": ("--temperature", "weights_from.temperature", "temperature="),
    "search": ("--search", "weights_from.search: true", "search=True"),
    "plot": ("--plot", "--plot", "plot_sweep()"),
    "candidates": ("--candidates", "--candidates", "candidates="),
    "retriever": ("--retriever", "--retriever", "retriever="),
    "top_k": ("--top-k", "--top-k", "top_k="),
    "mode": ("--mode", "--mode", "mode="),
    "keep": ("--keep", "weights_from.keep", "keep="),
    "examples": ("--examples", "weights_from.examples", "examples="),
    "models": ("--models", "models:", "models="),
    "keep_tolerance": ("--keep-tolerance", "weights_from.keep_tolerance", "keep_tolerance="),
    "keep_weight": ("--keep-weight", "weights_from.keep_weight", "keep_weight="),
    "search_space": ("--search-space", "weights_from.search_space", "search_space="),
    "hybrid_weights": ("--hybrid-weights", "--hybrid-weights", "hybrid_weights="),
    "parameter_t": ("--param t=0.3", "parameters: {t: 0.3}", "parameters={'t': 0.3}"),
    "score_dtype": ("--score-dtype", "weights_from.score_dtype", "score_dtype="),
    "device_map": ("--device-map", "weights_from.device_map", "device_map="),
    "max_memory": ("--max-memory", "weights_from.max_memory", "max_memory="),
    "offload_folder": ("--offload-folder", "weights_from.offload_folder", "offload_folder="),
}


def option(name: str) -> str:
    """How the user spells option ``name`` where they are: ``--force``, ``force=True``, ``normalize: true``."""
    cli, recipe, python = SPELLINGS[name]
    return {"cli": cli, "recipe": recipe}.get(DOOR.get(), python)


def did_you_mean(word, choices) -> str:
    """``"did you mean 'density'? "`` when ``word`` is close to one of ``choices``, else ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


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


class CocktailWarning(UserWarning):
    """A merge went ahead, but something deserves the user's attention."""


def _inside(filename: str) -> bool:
    """A frame of cocktail's own (or of ``contextlib``, which runs cocktail's ``with`` blocks)."""
    return os.path.abspath(filename).startswith(PACKAGE) or filename == contextlib.__file__


def warn(message: str) -> None:
    """Issue a :class:`CocktailWarning` that points at the caller's line (the first frame outside cocktail)."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: the caller of warn()
    while frame is not None and _inside(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, CocktailWarning, stacklevel=level)
