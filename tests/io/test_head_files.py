"""Head files beside the transformer (bge-m3's ``colbert_linear.pt`` and ``sparse_linear.pt``) are merged
like every other weight, written back under their own names, and never dropped without a word."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import make_m3, read_folder_tensors, run_cli, snapshot

import cocktail

HEADS = ("colbert_linear.pt", "sparse_linear.pt")


def load_head(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(folder) / name, weights_only=True)


@pytest.fixture
def m3_pair(tmp_path):
    return make_m3(tmp_path / "m3a", seed=0), make_m3(tmp_path / "m3b", seed=1)


def test_head_files_are_merged_tensor_by_tensor_and_written_under_their_names(tmp_path, m3_pair):
    a, b = m3_pair
    before = {m: snapshot(m) for m in m3_pair}
    result = run_cli("merge", "--models", a, b, "--weights", "0.3", "0.7", "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result
    out = tmp_path / "out"
    for name in HEADS:
        merged = load_head(out, name)
        first, second = load_head(a, name), load_head(b, name)
        assert set(merged) == set(first) == {"weight", "bias"}
        for key in merged:
            assert torch.allclose(merged[key], 0.3 * first[key] + 0.7 * second[key], atol=1e-7, rtol=0)
    encoder = read_folder_tensors(out)
    assert not any("linear" in name for name in encoder)  # heads stay in their own files
    recipe = (out / "cocktail_recipe.yaml").read_text()
    assert all(name in recipe for name in HEADS)  # hashed as inputs: --verify covers them
    assert {m: snapshot(m) for m in m3_pair} == before


def test_per_tensor_weights_can_name_a_head(tmp_path, m3_pair):
    a, b = m3_pair
    weights = [[{"filter": "colbert_linear", "value": 1.0}, {"value": 0.5}],
               [{"filter": "colbert_linear", "value": 0.0}, {"value": 0.5}]]
    cocktail.merge([str(a), str(b)], weights=weights, output=tmp_path / "out")
    colbert, sparse = load_head(tmp_path / "out", HEADS[0]), load_head(tmp_path / "out", HEADS[1])
    assert torch.equal(colbert["weight"], load_head(a, HEADS[0])["weight"])
    expected = 0.5 * load_head(a, HEADS[1])["weight"] + 0.5 * load_head(b, HEADS[1])["weight"]
    assert torch.allclose(sparse["weight"], expected, atol=1e-7, rtol=0)


def test_dtype_applies_to_head_files(tmp_path, m3_pair):
    cocktail.merge([str(p) for p in m3_pair], output=tmp_path / "out", dtype="float16")
    assert {t.dtype for name in HEADS for t in load_head(tmp_path / "out", name).values()} == {torch.float16}


def test_a_head_file_only_the_first_model_has_is_copied_with_a_warning(tmp_path):
    a = make_m3(tmp_path / "a", seed=0)
    b = make_m3(tmp_path / "b", seed=1, heads=("colbert_linear",))
    result = run_cli("merge", "--models", a, b, "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result
    assert "weight file sparse_linear.pt is in" in result.stderr and "copied from the first model" in result.stderr
    assert torch.equal(load_head(tmp_path / "out", "sparse_linear.pt")["weight"],
                       load_head(a, "sparse_linear.pt")["weight"])


def test_a_head_file_the_first_model_lacks_is_refused_by_name(tmp_path):
    a = make_m3(tmp_path / "a", seed=0, heads=("colbert_linear",))
    b = make_m3(tmp_path / "b", seed=1)
    result = run_cli("merge", "--models", a, b, "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == [
        f"error: weight file sparse_linear.pt is in {b} but not in the first model {a}: "
        "it can be neither merged nor copied (put a model that has it first)"]
    assert not (tmp_path / "out").exists()


def test_a_head_file_with_code_in_it_is_refused_and_the_code_never_runs(tmp_path, m3_pair):
    a, b = m3_pair
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (b / "sparse_linear.pt").write_bytes(pickle.dumps({"weight": Payload()}))
    result = run_cli("merge", "--models", a, b, "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 2, result
    last = result.stderr.strip().splitlines()[-1]  # torch's own warning before it is issue 11's (item 15)
    assert last.startswith("error: ") and "sparse_linear.pt: cannot be loaded safely as weights" in last
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_training_state_files_are_not_heads(tmp_path, m3_pair):
    a, b = m3_pair
    for folder in m3_pair:
        torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")
        torch.save({}, folder / "rng_state.pth")
    cocktail.merge([str(a), str(b)], output=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.p*")) == list(HEADS)


def test_inspect_lists_every_component(m3_pair):
    a, b = m3_pair
    result = run_cli("inspect", a, b, "--json")
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    for model in report["models"]:
        assert model["head_files"] == list(HEADS)
        assert [(c["name"], c["kind"], c["tensors"]) for c in model["components"]][1:] == [
            ("colbert_linear.pt", "head file", 2), ("sparse_linear.pt", "head file", 2)]
        assert {"colbert_linear.pt", "sparse_linear.pt"} <= set(model["files"])
    assert report["mergeable"] is True
    text = run_cli("inspect", a).stdout
    assert "head files    colbert_linear.pt, sparse_linear.pt (merged too)" in text
