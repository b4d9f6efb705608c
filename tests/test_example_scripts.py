"""The README's first command: examples/instruction_merge.py, in its short mode (the full run is for people)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, assert_png


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
    # it is never silent for long: each model and data set it scores is named on stderr as it starts
    assert "eval [5/5] merged" in proc.stderr and "scifact, no instruction" in proc.stderr, proc.stderr[-3000:]


BLOCK = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {blocked!r}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
sys.argv = [{script!r}, *{args!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def run_example(script: str, *args: str, blocked: str = "", tmpdir=None) -> subprocess.CompletedProcess:
    """Run an example as a user does; ``blocked``: a package to act as if not installed."""
    path = str(REPO / "examples" / script)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "examples") + os.pathsep + str(REPO)}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    code = BLOCK.format(blocked=blocked or "-", script=path, args=list(args))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.parametrize("script, blocked, install", [
    ("quickstart.py", "sentence_transformers", 'pip install -e ".[st]"'),
    ("training_pipeline.py", "datasets", 'pip install -e ".[train]"'),
    ("instruction_merge.py", "matplotlib", 'pip install -e ".[plot]"'),
])
def test_an_example_names_the_extra_it_lacks_in_one_line(script, blocked, install, tmp_path):
    args = ["--quick", "--workdir", str(tmp_path / "w")] if script != "quickstart.py" else []
    proc = run_example(script, *args, blocked=blocked)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: this example needs {blocked.replace('_', '-')}: {install}"]


def test_an_example_removes_its_temporary_folder(tmp_path, minilm_path):
    pytest.importorskip("sentence_transformers")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = run_example("quickstart.py", tmpdir=scratch)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "merged" in proc.stdout
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("script", ["quickstart.py", "instruction_merge.py", "training_pipeline.py"])
def test_example_help_gives_a_whole_sentence(script):
    proc = run_example(script, "--help")
    assert proc.returncode == 0, proc.stderr
    description = proc.stdout.split("\n\n")[1]
    assert description.rstrip().endswith("."), proc.stdout
