"""Regular expressions that come from input files: an adapter's ``rank_pattern`` / ``alpha_pattern``
keys, a recipe's per-tensor ``filter``.

They are compiled with RE2 (``google-re2``), which matches in time linear in the text: Python's ``re``
backtracks, and a pattern like ``([a-z0-9_.]+)+X`` against a tensor name runs for hours. RE2 has no
backreferences and no lookaround; a pattern that uses them is refused with the reason.
"""

from __future__ import annotations

import functools

import re2

from cocktail.errors import InputError

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print every refused pattern to stderr (the error says it once)

NOT_SUPPORTED = ("cocktail matches patterns with RE2, which never backtracks: backreferences (\\1), lookaround "
                 "((?=, (?!, (?<=, (?<!), possessive quantifiers and \\Z (write \\z) are not available")
SHOWN = 80  # characters of RE2's reason kept (it quotes the pattern's tail)


@functools.lru_cache(maxsize=1024)
def compile_pattern(text: str):
    """``text`` compiled with RE2 (``search`` and ``match`` as in ``re``); an :class:`InputError` with
    RE2's reason (without the pattern: the caller names it) when it cannot be compiled."""
    try:
        return re2.compile(text, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else ""
        reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        reason = reason if len(reason) <= SHOWN else reason[:SHOWN - 3] + "..."
        unsupported = any(mark in reason for mark in ("invalid perl operator", "invalid escape sequence",
                                                      "bad repetition operator"))
        raise InputError(reason + (f"; {NOT_SUPPORTED}" if unsupported else "")) from None
