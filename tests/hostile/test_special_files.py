"""Only regular files are read or copied: a FIFO where a model folder should have a file (a side file,
a config, a module's file, the weights, a tokenizer file transformers would read, the model card) is
refused with one error line, or for the card skipped with a warning, and never blocks the merge
(issue 20, item 6). Every case runs in one subprocess with a time limit, so a regression fails
instead of hanging the suite (and the interpreter starts once)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hostile.conftest import tree_hashes

REPO = str(Path(__file__).resolve().parents[2])
LIMIT = 300  # seconds for every case together: each takes a second or two; a blocked read never ends
RUN_CASES = """
import json, sys
from click.testing import CliRunner
from cocktail.cli import cli
results = {}
for name, args in json.loads(sys.argv[1]).items():
    result = CliRunner().invoke(cli, args)
    results[name] = [result.exit_code, result.stderr]
    print(json.dumps({name: results[name]}), flush=True)
"""


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


IN_THE_MODEL = ["config.json", "tokenizer_config.json", "vocab.txt", "modules.json", "1_Pooling/config.json",
                "model.safetensors"]
CASES = [*IN_THE_MODEL, "config_from", "tokenizer read for examples", "inspect", "model card"]


def build(case: str, root: Path, tiny_models) -> dict:
    """The folders of ``case`` under ``root``: what is run, what it names, what must stay unchanged."""
    a, b = (Path(shutil.copytree(m, root / m.name)) for m in tiny_models)
    out = root / "out"
    args = ["merge", "--models", str(a), str(b), "-o", str(out), "--quiet"]
    inputs = [a, b]
    if case in IN_THE_MODEL:
        pooling_module(a)
        named = fifo(a, case)
    elif case == "config_from":
        config = Path(shutil.copytree(b, root / "config"))
        named = fifo(config, "special_tokens_map.json")
        args += ["--config-from", str(config)]
        inputs.append(config)
    elif case == "tokenizer read for examples":  # transformers would block reading it
        few = root / "few.jsonl"
        few.write_text("\n".join(json.dumps({"query": q, "pos": [p], "neg": ["cat dog"]})
                                 for q, p in (("the sun", "sun moon"), ("red car", "car red"))) + "\n")
        named = fifo(a, "vocab.txt")
        args += ["--examples", str(few)]
    elif case == "inspect":
        named = fifo(a, "config.json")
        args = ["inspect", str(a)]
    else:
        named = fifo(a, "README.md")
    return {"args": args, "named": named, "inputs": inputs, "out": out}


@pytest.fixture(scope="module")
def results(tiny_models, tmp_path_factory):
    """``{case: (setup, exit code, stderr, inputs' hashes before)}`` from one time-limited subprocess."""
    setups = {case: build(case, tmp_path_factory.mktemp("fifo"), tiny_models) for case in CASES}
    before = {case: tree_hashes(*s["inputs"]) for case, s in setups.items()}
    try:
        done = subprocess.run([sys.executable, "-c", RUN_CASES, json.dumps({c: s["args"] for c, s in setups.items()})],
                              capture_output=True, text=True, timeout=LIMIT, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": REPO})
    except subprocess.TimeoutExpired as exc:
        finished = [json.loads(line) for line in (exc.stdout or b"").decode().splitlines() if line.startswith("{")]
        stuck = CASES[len(finished)]
        pytest.fail(f"the case {stuck!r} was still running after {LIMIT} s (a blocked read?)")
    assert done.returncode == 0, done.stderr
    found = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            found.update(json.loads(line))
    return {case: (setups[case], *found[case], before[case]) for case in CASES}


@pytest.mark.parametrize("case", [c for c in CASES if c != "model card"])
def test_a_fifo_where_a_file_is_read_is_refused(results, case):
    setup, code, stderr, before = results[case]
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "named pipe" in lines[0], lines
    assert setup["named"] in lines[0]
    assert tree_hashes(*setup["inputs"]) == before
    out = setup["out"]
    assert not os.path.lexists(out) and not [p for p in out.parent.iterdir() if p.name.startswith(".out.")]


def test_a_fifo_model_card_is_skipped_with_a_warning(results):
    setup, code, stderr, _ = results["model card"]
    assert code == 0, stderr
    assert "warning:" in stderr and "README.md" in stderr and "named pipe" in stderr
    assert (setup["out"] / "README.md").is_file()
