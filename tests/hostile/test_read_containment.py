"""Every file cocktail reads from a model folder stays inside it, also when it is only read, never
copied: a config, shard index, modules.json, adapter config or model card that is a symlink out of
the folder is refused (or, for the card, skipped with a warning), and ``--verify`` hashes no file that
its provenance names outside. A Hugging Face cache snapshot, whose files are all links into the
repository's ``blobs/``, keeps working (issue 20, item 7)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import make_bert, read_folder_tensors

from hostile.conftest import refuse, run_in_process, tree_hashes

SECRET = "hunter2-from-outside"


def move_out(folder: Path, name: str, outside: Path, change=None) -> str:
    """Move ``folder/name`` to ``outside`` (``change``d to hold the secret) and leave a symlink to it."""
    outside.mkdir(exist_ok=True)
    moved = outside / name.replace("/", "_")
    shutil.move(folder / name, moved)
    if change is not None:
        moved.write_text(change(moved.read_text()))
    (folder / name).symlink_to(moved)
    return name


def with_secret(text: str) -> str:
    return json.dumps({**json.loads(text), "secret": SECRET})


def shard(folder: Path) -> None:
    """Turn ``folder``'s single weight file into a one-shard model with an index."""
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    from safetensors import safe_open

    with safe_open(str(folder / "model-00001-of-00001.safetensors"), "pt") as f:
        names = list(f.keys())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in names}}))


def spoil(case: str, a: Path, outside: Path) -> str:
    if case == "config.json":
        return move_out(a, "config.json", outside, with_secret)
    if case == "model.safetensors.index.json":
        shard(a)
        return move_out(a, "model.safetensors.index.json", outside, with_secret)
    if case == "modules.json":
        (a / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                     "type": "sentence_transformers.models.Transformer"}]))
        return move_out(a, "modules.json", outside)
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["config.json", "model.safetensors.index.json", "modules.json"])
def test_a_file_only_read_through_a_symlink_out_is_refused(models, tmp_path, case):
    a, b = models
    outside = tmp_path / "outside"
    named = spoil(case, a, outside)
    out = tmp_path / "out"
    refuse(["merge", "--models", a, b, "-o", out, "--quiet"], inputs=[a, b, outside], outputs=[out], contains=named)
    result = refuse(["inspect", a], inputs=[a, outside], contains=named)
    assert SECRET not in result.stdout + result.stderr


def test_an_adapter_config_through_a_symlink_out_is_refused(models, tmp_path):
    from conftest import make_lora
    from peft import LoraConfig

    a, b = models
    lora = tmp_path / "lora"
    make_lora(a, lora, LoraConfig(r=2, lora_alpha=4, target_modules=["query"]), "BertModel")
    named = move_out(lora, "adapter_config.json", tmp_path / "outside")
    refuse(["merge", "--models", lora, b, "--adapter-base", a, "-o", tmp_path / "out", "--quiet"],
           inputs=[a, b, lora, tmp_path / "outside"], outputs=[tmp_path / "out"], contains=named)


def test_a_model_card_through_a_symlink_out_is_not_read(models, tmp_path):
    a, b = models
    (a / "README.md").write_text(f"---\nbase_model: org/{SECRET}\nlicense: mit\n---\n# A\n")
    move_out(a, "README.md", tmp_path / "outside")
    result = run_in_process(["merge", "--models", a, b, "-o", tmp_path / "out", "--quiet"])
    assert result.returncode == 0, result
    assert "warning:" in result.stderr and "README.md" in result.stderr and "outside the model folder" in result.stderr
    assert SECRET not in (tmp_path / "out" / "README.md").read_text()


def test_verify_hashes_no_file_its_provenance_names_outside(models, tmp_path):
    a, b = models
    out = tmp_path / "out"
    assert run_in_process(["merge", "--models", a, b, "-o", out, "--quiet"]).returncode == 0
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside" / "secret.txt"
    secret.write_text(SECRET)
    recipe = yaml.safe_load((out / "cocktail_recipe.yaml").read_text())
    recipe["provenance"]["inputs"][0]["sha256"]["../outside/secret.txt"] = hashlib.sha256(secret.read_bytes()).hexdigest()
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    refuse(["run", tmp_path / "r.yaml", "--verify", "-o", tmp_path / "again", "--quiet"],
           inputs=[a, b, out, tmp_path / "outside"], outputs=[tmp_path / "again"], contains="../outside/secret.txt")


def hub_snapshot(model: Path, cache: Path, name: str) -> Path:
    """``model`` laid out as the Hugging Face cache lays out a download: every file of the snapshot is
    a link ``../../blobs/<sha256>`` (deeper files: more ``..``) into the repository's ``blobs/``."""
    repo = cache / f"models--org--{name}"
    snapshot = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copy(path, repo / "blobs" / digest)
        link = snapshot / path.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / digest, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot


def test_a_hub_cache_snapshot_with_modules_a_shard_index_and_a_card_works(tmp_path):
    """Every file a merge reads (config, modules.json, 1_Pooling/config.json, shard index, shards,
    model card, tokenizer) is a link into blobs/; the merge, inspect and --verify all work."""
    built = [make_bert(tmp_path / "build" / n, seed=s, shard_size="20KB") for n, s in (("a", 0), ("b", 1))]
    for folder in built:
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                     "pooling_mode_cls_token": True}))
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
        (folder / "README.md").write_text("---\nbase_model: org/base-model\nlicense: mit\n---\n# tuned\n")
    cache = tmp_path / "hub"
    a, b = (hub_snapshot(folder, cache, name) for folder, name in zip(built, ("a", "b")))
    before = tree_hashes(cache)
    out = tmp_path / "out"
    result = run_in_process(["merge", "--models", a, b, "--weights", "1", "0", "-o", out, "--quiet"])
    assert result.returncode == 0 and "warning" not in result.stderr, result
    merged, original = read_folder_tensors(out), read_folder_tensors(built[0])
    assert merged.keys() == original.keys() and all(merged[k].equal(original[k]) for k in original)
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"] is True
    assert "org/base-model" in (out / "README.md").read_text() and "license: mit" in (out / "README.md").read_text()
    assert run_in_process(["inspect", a]).returncode == 0
    result = run_in_process(["run", out / "cocktail_recipe.yaml", "--verify", "-o", tmp_path / "again", "--quiet"])
    assert result.returncode == 0, result
    assert tree_hashes(cache) == before
