"""JSON from files cocktail did not write (config.json, shard indexes, adapter configs, modules.json,
example and data lines, safetensors headers), parsed so that every failure is a ``ValueError``.

``json.loads`` raises a ``RecursionError`` for nesting a few thousand levels deep, and a ``ValueError``
without a position for an integer longer than Python converts (``sys.get_int_max_str_digits()``).
:func:`loads` turns both into a :class:`JSONLimitError` (a ``ValueError`` with a one-line ``msg``, like
``json.JSONDecodeError``), so a caller that catches ``ValueError`` reports every bad file in one line.
"""

from __future__ import annotations

import json
import sys
from typing import Any


class JSONLimitError(ValueError):
    """Valid JSON that cocktail does not read: nesting too deep, an integer with too many digits."""

    def __init__(self, msg: str):
        super().__init__(msg)
        self.msg = msg


def integer(text: str) -> int:
    """``int(text)`` for decimal digits, or a :class:`JSONLimitError` naming how many there are over the limit."""
    limit = sys.get_int_max_str_digits()
    digits = len(text.lstrip("-"))
    if limit and digits > limit:
        raise JSONLimitError(f"an integer of {digits} digits (at most {limit} are read)")
    return int(text)


def loads(text: "str | bytes", **kwargs) -> Any:
    """``json.loads(text)``; nesting deeper than Python's recursion allows, or an integer longer than it
    converts, is a :class:`JSONLimitError` instead of a ``RecursionError`` or a bare ``ValueError``."""
    try:
        return json.loads(text, parse_int=integer, **kwargs)
    except RecursionError:
        raise JSONLimitError("nested too deeply (lists or objects inside each other about a thousand "
                             "levels deep or more)") from None

