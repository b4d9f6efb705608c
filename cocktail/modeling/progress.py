"""The progress bars of steps that take a while (encoding a corpus, scoring pairs, a sweep's weights):
on stderr, shown only once a step has run :data:`DELAY_S` seconds (so quick steps stay quiet, and a
slow one, however few its texts, shows its bar), cleared when it ends; ``-q`` turns them off."""

from __future__ import annotations

import sys

from tqdm import tqdm

DELAY_S = 2.0


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "text", iterable=None) -> tqdm:
    """A bar counting ``total`` ``unit`` s (or the items of ``iterable``), a silent one when not ``enabled``."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, disable=not enabled,
                delay=DELAY_S)
