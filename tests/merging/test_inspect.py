"""`cocktail inspect` counts tensors as `cocktail merge` does: an integer buffer (all-MiniLM-L6-v2's
``embeddings.position_ids``) is copied, not merged, and both say so in the same words."""

from __future__ import annotations

import re

import cocktail
from cocktail.merging.inspect import format_report, inspect_models


def test_inspect_and_merge_count_the_same_tensors(minilm_path):
    report = inspect_models([str(minilm_path), str(minilm_path)])
    text = format_report(report)
    merged = cocktail.merge([str(minilm_path), str(minilm_path)], dry_run=True).summary()
    assert merged["copied_tensors"] == 1  # position_ids: int64
    counted = re.search(r"mergeable: yes \((\d+) tensors merged, (\d+) copied", text)
    assert counted, text
    assert (int(counted[1]), int(counted[2])) == (merged["merged_tensors"], merged["copied_tensors"]) == (103, 1)
    assert (report["merged_tensors"], report["copied_tensors"]) == (103, 1)
