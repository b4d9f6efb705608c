"""Every path a model folder names (modules.json, shard index, its files through symlinks) stays inside
that folder, and every write stays inside the output: item 1 of the hostile-inputs issue."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import read_folder_tensors, run_cli

from hostile.conftest import refuse, run_in_process, tree_hashes

POOLING = {"word_embedding_dimension": 32, "pooling_mode_cls_token": True}


def modules(folder: Path, *entries) -> None:
    (folder / "modules.json").write_text(json.dumps(
        [{"path": "", "type": "sentence_transformers.models.Transformer"}, *entries]))


def test_the_issue_reproduction_writes_nothing_outside(models, tmp_path):
    """modules.json path ``lnk/../..`` through a symlink inside the model: once this wrote ~/.bashrc."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    evil, good = (Path(shutil.copytree(m, home / "models" / n)) for m, n in zip(models, ("evil", "good")))
    (home / ".bashrc").write_text("original\n")
    (evil / "a/b/c").mkdir(parents=True)
    (evil / "lnk").symlink_to("a/b/c")
    (evil / "a/.bashrc").write_text("echo pwned\n")
    modules(evil, {"path": "lnk/../..", "type": "x.Pooling"})
    before = tree_hashes(home)
    result = run_cli("merge", "--models", "models/evil", "models/good", "-o", "merged", "--quiet", cwd=home)
    assert result.returncode == 2, result
    assert result.stderr.count("error:") == 1 and "lnk/../.." in result.stderr and "leaves the model folder" in result.stderr
    assert tree_hashes(home) == before and (home / ".bashrc").read_text() == "original\n"


def spoil(case: str, a: Path, tmp_path: Path) -> str:
    """Make model ``a`` name a path outside itself; returns what the error names."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps(POOLING))
    (outside / "secret.json").write_text('{"token": "hunter2"}')
    if case == "absolute module":
        modules(a, {"path": str(outside), "type": "x.Pooling"})
        return str(outside)
    if case == "dotdot module":
        modules(a, {"path": "../outside", "type": "x.Pooling"})
        return "../outside"
    if case == "transformer module outside":
        (a / "modules.json").write_text(json.dumps([{"path": "../B", "type": "x.models.Transformer"}]))
        return "../B"
    if case == "symlinked module":
        (a / "1_Pooling").symlink_to(outside)
        modules(a, {"path": "1_Pooling", "type": "x.Pooling"})
        return "1_Pooling"
    if case == "symlink in a module":
        (a / "1_Pooling").mkdir()
        (a / "1_Pooling" / "config.json").symlink_to(outside / "secret.json")
        modules(a, {"path": "1_Pooling", "type": "x.Pooling"})
        return "1_Pooling/config.json"
    if case == "symlinked side file":
        (a / "tokenizer_config.json").unlink()
        (a / "tokenizer_config.json").symlink_to(outside / "secret.json")
        return "tokenizer_config.json"
    if case == "symlinked weights":
        shutil.move(a / "model.safetensors", outside / "model.safetensors")
        (a / "model.safetensors").symlink_to(outside / "model.safetensors")
        return "model.safetensors"
    if case == "module path a number":
        (a / "modules.json").write_text(json.dumps([{"path": 7, "type": "x.Pooling"}]))
        return "7"
    if case == "modules.json [1,2]":
        (a / "modules.json").write_text("[1, 2]")
        return "modules.json"
    shards = {"dotdot shard": "../outside/model.safetensors", "absolute shard": str(outside / "model.safetensors"),
              "symlinked shard": "shard.safetensors"}
    shutil.copy(a / "model.safetensors", outside / "model.safetensors")
    (a / "model.safetensors").rename(a / "kept.safetensors")
    if case == "symlinked shard":
        (a / "shard.safetensors").symlink_to(outside / "model.safetensors")
    (a / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"embeddings.word_embeddings.weight": shards[case]}}))
    return shards[case]


CASES = ["absolute module", "dotdot module", "transformer module outside", "symlinked module",
         "symlink in a module", "symlinked side file", "symlinked weights", "module path a number",
         "modules.json [1,2]", "dotdot shard", "absolute shard", "symlinked shard"]


@pytest.mark.parametrize("case", CASES)
def test_a_path_leaving_the_model_folder_is_refused(models, tmp_path, case):
    a, b = models
    named = spoil(case, a, tmp_path)
    out = tmp_path / "out"
    refuse(["merge", "--models", a, b, "-o", out, "--quiet"], inputs=[a, b, tmp_path / "outside"], outputs=[out],
           contains=named)


@pytest.mark.parametrize("case", ["dotdot module", "symlinked side file", "symlink in a module"])
def test_config_from_is_held_to_the_same_rule(models, tmp_path, case):
    a, b = models
    config = Path(shutil.copytree(b, tmp_path / "config"))
    named = spoil(case, config, tmp_path)
    out = tmp_path / "out"
    refuse(["merge", "--models", a, b, "--config-from", config, "-o", out, "--quiet"],
           inputs=[a, b, config, tmp_path / "outside"], outputs=[out], contains=named)


def test_symlinks_that_stay_inside_the_model_are_fine(models, tmp_path):
    a, b = models
    (a / "real" / "1_Pooling").mkdir(parents=True)
    (a / "real" / "1_Pooling" / "config.json").write_text(json.dumps(POOLING))
    (a / "1_Pooling").symlink_to("real/1_Pooling")
    modules(a, {"path": "1_Pooling", "type": "x.Pooling"})
    result = run_in_process(["merge", "--models", a, b, "-o", tmp_path / "out", "--quiet"])
    assert result.returncode == 0, result
    assert json.loads((tmp_path / "out" / "1_Pooling" / "config.json").read_text()) == POOLING


def test_a_hub_cache_snapshot_may_point_into_its_blobs(models, tmp_path):
    """The Hugging Face cache keeps a snapshot's files as symlinks to ``../../blobs/<hash>``."""
    a, b = models
    repo = tmp_path / "hub" / "models--org--a"
    snap = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(a.iterdir()):
        shutil.copy(f, repo / "blobs" / f.name)
        os.symlink(os.path.relpath(repo / "blobs" / f.name, snap), snap / f.name)
    result = run_in_process(["merge", "--models", snap, b, "--weights", "1", "0", "-o", tmp_path / "out", "--quiet"])
    assert result.returncode == 0, result
    merged, original = read_folder_tensors(tmp_path / "out"), read_folder_tensors(a)
    assert all(merged[k].equal(original[k]) for k in original)


def test_adapter_weights_through_a_symlink_out_of_the_adapter_are_refused(models, tmp_path):
    from conftest import make_lora
    from peft import LoraConfig

    a, b = models
    lora = tmp_path / "lora"
    make_lora(a, lora, LoraConfig(r=2, lora_alpha=4, target_modules=["query"]), "BertModel")
    (tmp_path / "outside").mkdir()
    shutil.move(lora / "adapter_model.safetensors", tmp_path / "outside" / "adapter_model.safetensors")
    (lora / "adapter_model.safetensors").symlink_to(tmp_path / "outside" / "adapter_model.safetensors")
    refuse(["merge", "--models", lora, b, "--adapter-base", a, "-o", tmp_path / "out", "--quiet"],
           inputs=[a, b, lora, tmp_path / "outside"], outputs=[tmp_path / "out"], contains="adapter_model.safetensors")


@pytest.mark.parametrize("command", ["weights --plot", "sweep --plot", "sweep --frontier-plot"])
def test_a_plot_inside_an_input_folder_is_refused_before_any_work(models, tmp_path, command):
    """A plot is an output too: written into a model folder (or a data folder) it would change an input."""
    a, b = models
    examples = tmp_path / "few.jsonl"
    examples.write_text(json.dumps({"query": "red cat", "pos": ["a red cat"], "neg": ["the sea"]}) + "\n")
    sts = tmp_path / "sts.tsv"
    sts.write_text("a cat\tthe cat\t4.5\nred car\tblue sea\t1.0\n")
    plot = a / "sub" if command == "sweep --frontier-plot" else a
    if plot != a:
        plot.mkdir()
    which, option = command.split()
    if which == "weights":
        args = ["weights", "--models", a, b, "--examples", examples, "--keep", examples, "--search", option,
                plot / "frontier.png"]
    else:
        args = ["sweep", "--models", a, b, "--data", sts, "--data", sts, "--steps", "3", option, plot / "plot.png"]
    refuse(args, inputs=[a, b, examples, sts], outputs=[plot / "frontier.png", plot / "plot.png"],
           contains="lies inside the input")
