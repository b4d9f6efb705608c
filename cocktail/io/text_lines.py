"""Reading the lines of a text file a user gave (evaluation data, few-shot examples, run files) in
bounded memory: a line holds at most :data:`MAX_LINE_CHARS` characters (1 MiB), and a longer one is
refused with the file and line number as soon as that much of it is read, never read whole.

A line of the real data sets cocktail reads is at most about 70,000 characters (a FlagEmbedding
training example with its negatives), and a text is cut to tens of thousands of characters before it
is tokenized (see :mod:`cocktail.modeling.text_cut`): a longer line is a mistake (a file that is not
line-based text) or an attack, not data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, TextIO

from cocktail.errors import InputError

MAX_LINE_CHARS = 1 << 20


def bounded_lines(handle: TextIO, path: Path, error: type[InputError] = InputError) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for every line of ``handle`` (with its line end), read a bounded piece at a
    time; ``error`` (an :class:`InputError` kind) for a line longer than :data:`MAX_LINE_CHARS`."""
    number = 0
    while True:
        line = handle.readline(MAX_LINE_CHARS + 2)  # room for the line end, "\r\n" at most
        if not line:
            return
        number += 1
        if len(line.rstrip("\r\n")) > MAX_LINE_CHARS:
            raise error(f"{path}, line {number}: longer than {MAX_LINE_CHARS:,} characters (1 MiB), the most a "
                        f"line of a data or examples file may hold")
        yield number, line
