"""A text is cut before it is tokenized, so no text can take memory out of proportion to a batch.

A tokenizer reads the whole of a text before it truncates the tokens to ``max_length``: a 16 MiB
passage took 1.5 GB to become 512 tokens. Every scorer and few-shot loss hands its texts through
:func:`cut` first, which keeps :data:`CHARS_PER_TOKEN` characters per token of ``max_length``
(16,384 characters for 512 tokens). Text runs about 4 characters to a token (CJK about 1), so a
text's first ``max_length`` tokens are the same after the cut, unless they span more than that many
characters (long runs of spaces, or of characters the tokenizer drops, or one "word" over 100
characters that a WordPiece tokenizer reads as one ``[UNK]``): such a text is cut there.

:func:`token_lengths` learns how many tokens texts have a chunk at a time (for batching by length),
so the tokenizer never holds a whole corpus at once.
"""

from __future__ import annotations

from typing import Optional, Sequence

CHARS_PER_TOKEN = 32
LENGTH_CHUNK = 256  # texts tokenized at once to learn their lengths


def cut(text: str, max_tokens: int) -> str:
    """``text`` cut to :data:`CHARS_PER_TOKEN` characters per token of ``max_tokens``."""
    limit = max(1, int(max_tokens)) * CHARS_PER_TOKEN
    return text if len(text) <= limit else text[:limit]


def cut_all(texts: Sequence[str], max_tokens: int) -> list[str]:
    """Each of ``texts`` :func:`cut` to ``max_tokens``."""
    return [cut(text, max_tokens) for text in texts]


def token_lengths(tokenizer, texts: Sequence[str], max_length: int,
                  second: Optional[Sequence[str]] = None, truncation="longest_first") -> list[int]:
    """How many tokens each text (or pair ``(texts[i], second[i])``) has, truncated to ``max_length``,
    tokenized :data:`LENGTH_CHUNK` at a time (the texts: already cut)."""
    lengths: list[int] = []
    for start in range(0, len(texts), LENGTH_CHUNK):
        first = list(texts[start:start + LENGTH_CHUNK])
        args = (first,) if second is None else (first, list(second[start:start + LENGTH_CHUNK]))
        ids = tokenizer(*args, truncation=truncation, max_length=max_length)["input_ids"]
        lengths += [len(row) for row in ids]
    return lengths
