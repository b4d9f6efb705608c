"""The README's first command: examples/instruction_merge.py, in its short mode (the full run is for people)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO
from test_sweep import assert_png


def test_instruction_merge_example_quick(tmp_path, minilm_path):
    plot = tmp_path / "sweep.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "instruction_merge.py"), "--quick",
                           "--workdir", str(tmp_path / "work"), "--plot", str(plot)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for label in ("base all-MiniLM-L6-v2", "fine-tuned with instruction", "fine-tuned without instruction",
                  "merged 0.5 / 0.5"):
        row = re.search(rf"^\| {re.escape(label)} +\|(.*)\|$", out, re.MULTILINE)
        assert row, f"no table row for {label}:\n{out}"
        values = [float(cell) for cell in row.group(1).split("|")]
        assert len(values) == 3 and all(-1 <= v <= 1 for v in values)
    # the variants and the merge are real model folders; the merge was written by cocktail
    work = tmp_path / "work"
    for name in ("with-instruction", "without-instruction", "merged-0.5"):
        assert (work / name / "model.safetensors").is_file()
    assert (work / "merged-0.5" / "cocktail_recipe.yaml").is_file()
    assert_png(plot)
