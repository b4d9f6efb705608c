"""``--force`` replaces only an empty folder or a previous cocktail output, never an input or the current
folder (item 2); nothing is left behind, not even by a killed run (item 14); writing errors are one
line (item 12: a file size limit, a long output name, a parent that cannot be written)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hostile.conftest import refuse, run_in_process, tree_hashes


def examples(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps({"query": q, "pos": [p], "neg": ["cat dog"]})
                              for q, p in (("the sun", "sun moon"), ("red car", "car red"))) + "\n")
    return path


def test_config_from_is_never_replaced(models, tmp_path):
    a, b = models
    cfg = Path(shutil.copytree(b, tmp_path / "CFG"))
    refuse(["merge", "--models", a, b, "--config-from", cfg, "-o", cfg, "--force", "--quiet"], inputs=[a, b, cfg],
           contains="input model")


def test_the_folder_of_the_examples_is_never_replaced(models, tmp_path):
    a, b = models
    few = examples(tmp_path / "d" / "few.jsonl")
    refuse(["merge", "--models", a, b, "--examples", few, "-o", tmp_path / "d", "--force", "--quiet"],
           inputs=[a, b, tmp_path / "d"], contains="holds the input file")


def test_a_recipe_whose_output_holds_it_is_never_replaced(models, tmp_path):
    a, b = models
    folder = tmp_path / "r"
    folder.mkdir()
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"models: [{a}, {b}]\noutput: .\n")
    refuse(["run", recipe, "--force", "--quiet"], inputs=[a, b, folder], contains="holds the input file",
           cwd=tmp_path)


@pytest.mark.parametrize("where", [".", ".."])
def test_the_current_folder_is_never_replaced(models, tmp_path, where):
    a, b = models
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    refuse(["merge", "--models", a, b, "-o", where, "--force", "--quiet"], inputs=[a, b, tmp_path / "work"],
           cwd=work, contains="current folder")


def test_a_folder_that_is_not_a_cocktail_output_is_never_replaced(models, tmp_path):
    a, b = models
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("three years of work")
    refuse(["merge", "--models", a, b, "-o", out, "--force", "--quiet"], inputs=[a, b, out],
           contains="not a cocktail output")


def test_a_symlink_to_an_input_is_never_replaced(models, tmp_path):
    a, b = models
    (tmp_path / "link").symlink_to(a)
    refuse(["merge", "--models", a, b, "-o", tmp_path / "link", "--force", "--quiet"], inputs=[a, b],
           contains="input model")
    assert (tmp_path / "link").resolve() == a.resolve()


def test_an_empty_folder_and_a_read_only_previous_output_are_replaced(models, tmp_path):
    a, b = models
    out = tmp_path / "out"
    out.mkdir()
    assert run_in_process(["merge", "--models", a, b, "-o", out, "--force", "--quiet"]).returncode == 0
    for path in [out, *out.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    result = run_in_process(["merge", "--models", a, b, "--weights", "0.2", "0.8", "-o", out, "--force", "--quiet"])
    assert result.returncode == 0, result
    assert "0.2" in (out / "cocktail_recipe.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "B", "out"]  # no .out.old-* left


def test_a_killed_merge_leaves_a_folder_the_next_run_removes(models, tmp_path):
    """``kill -9`` in the middle of a real merge (stopped while writing), then a second run."""
    a, b = models
    out = tmp_path / "out"
    code = ("import os, signal, sys; import cocktail.io.writer as w; orig = w.ShardedSafetensorsWriter.write\n"
            "def write(self, *a):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            "w.ShardedSafetensorsWriter.write = write\n"
            "from cocktail.cli import cli; cli.main(sys.argv[1:])")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    killed = subprocess.run([sys.executable, "-c", code, "merge", "--models", a, b, "-o", out, "--quiet"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.cocktail-")]
    assert len(left) == 1
    assert run_in_process(["merge", "--models", a, b, "-o", out, "--quiet"]).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "B", "out"]


def test_a_file_size_limit_is_one_error_line(models, tmp_path):
    a, b = models
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))  # ulimit -f: SIGXFSZ is ignored, writes get EFBIG
    try:
        refuse(["merge", "--models", a, b, "-o", tmp_path / "out", "--quiet"], inputs=[a, b],
               outputs=[tmp_path / "out"], contains="size limit")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_long_output_name_works_and_a_too_long_one_is_one_error_line(models, tmp_path):
    a, b = models
    long = tmp_path / ("m" * 240)
    result = run_in_process(["merge", "--models", a, b, "-o", long, "--quiet"])
    assert result.returncode == 0, result
    assert (long / "model.safetensors").is_file()
    refuse(["merge", "--models", a, b, "-o", tmp_path / ("m" * 256), "--quiet"], inputs=[a, b],
           outputs=[tmp_path / ("m" * 256)], contains="256 bytes")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_output_parent_that_cannot_be_written_is_one_error_line(models, tmp_path):
    a, b = models
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        refuse(["merge", "--models", a, b, "-o", parent / "out", "--quiet"], inputs=[a, b],
               outputs=[parent / "out"], contains="permission denied")
    finally:
        parent.chmod(0o755)


def test_inputs_are_hashed_unchanged_by_a_successful_merge_too(models, tmp_path):
    a, b = models
    before = tree_hashes(a, b)
    assert run_in_process(["merge", "--models", a, b, "-o", tmp_path / "out", "--quiet"]).returncode == 0
    assert tree_hashes(a, b) == before
