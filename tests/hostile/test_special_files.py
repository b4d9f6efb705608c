"""Only regular files are read or copied: a FIFO where a model folder should have a file (a side file,
a config, a module's file, the model card) is refused with one error line, or for the card skipped
with a warning, and never blocks the merge (issue 20, item 6). Each run is a subprocess with a time
limit, so a regression fails instead of hanging the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hostile.conftest import tree_hashes

REPO = str(Path(__file__).resolve().parents[2])
LIMIT = 120  # seconds: a tiny merge takes a few; a blocked read never ends


def run_bounded(*args) -> subprocess.CompletedProcess:
    """``cocktail ARGS`` in a fresh interpreter that may not run past LIMIT."""
    try:
        return subprocess.run([sys.executable, "-m", "cocktail", *map(str, args)], capture_output=True, text=True,
                              timeout=LIMIT, env={**os.environ, "PYTHONPATH": REPO}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"cocktail {' '.join(map(str, args))} was still running after {LIMIT} s (a blocked read?)")


def fifo(folder: Path, name: str) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    return name


def pooling_module(folder: Path) -> None:
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))


def assert_refused(result, named: str, inputs, out: Path, before) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0] and "named pipe" in lines[0], lines
    assert tree_hashes(*inputs) == before
    assert not os.path.lexists(out) and not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "vocab.txt", "modules.json",
                                  "1_Pooling/config.json", "model.safetensors"])
def test_a_fifo_in_a_model_folder_is_refused(models, tmp_path, name):
    a, b = models
    pooling_module(a)
    named = fifo(a, name)
    out = tmp_path / "out"
    before = tree_hashes(a, b)
    assert_refused(run_bounded("merge", "--models", a, b, "-o", out, "--quiet"), named, [a, b], out, before)


def test_a_fifo_in_the_config_from_folder_is_refused(models, tmp_path):
    a, b = models
    config = tmp_path / "config"
    config.mkdir()
    for f in b.iterdir():
        (config / f.name).write_bytes(f.read_bytes())
    named = fifo(config, "special_tokens_map.json")
    out = tmp_path / "out"
    before = tree_hashes(a, b, config)
    assert_refused(run_bounded("merge", "--models", a, b, "--config-from", config, "-o", out, "--quiet"), named,
                   [a, b, config], out, before)


def test_inspect_refuses_a_fifo_config(models, tmp_path):
    a, _ = models
    fifo(a, "config.json")
    result = run_bounded("inspect", a)
    assert result.returncode == 2 and "named pipe" in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_fifo_model_card_is_skipped_with_a_warning(models, tmp_path):
    a, b = models
    fifo(a, "README.md")
    result = run_bounded("merge", "--models", a, b, "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "README.md" in result.stderr and "named pipe" in result.stderr
    assert (tmp_path / "out" / "README.md").is_file()


def test_a_fifo_tokenizer_file_is_refused_before_examples_are_scored(models, tmp_path):
    """Weights from examples load the tokenizer with transformers, which would block on the FIFO."""
    a, b = models
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(json.dumps({"query": q, "pos": [p], "neg": ["cat dog"]})
                             for q, p in (("the sun", "sun moon"), ("red car", "car red"))) + "\n")
    named = fifo(a, "vocab.txt")
    out = tmp_path / "out"
    before = tree_hashes(a, b)
    assert_refused(run_bounded("merge", "--models", a, b, "--examples", few, "-o", out, "--quiet"), named,
                   [a, b], out, before)
