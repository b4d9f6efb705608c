"""The weights read are the ones transformers loads (item 6): ``model.safetensors`` wins over a shard
index as in ``from_pretrained``, the index's ``weight_map`` says which shard holds each tensor, and a
tensor in two shards or a malformed ``weight_map`` is one ``error:`` line."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import make_bert, read_folder_tensors
from transformers import BertModel

from hostile.conftest import refuse, run_in_process


def test_a_folder_with_a_single_file_and_an_index_gives_what_from_pretrained_loads(models, tmp_path):
    a, b = models
    sharded = make_bert(tmp_path / "sharded", seed=7, shard_size="20KB")
    for f in sharded.glob("model-*.safetensors"):
        shutil.copy(f, a / f.name)
    shutil.copy(sharded / "model.safetensors.index.json", a / "model.safetensors.index.json")
    loaded = BertModel.from_pretrained(str(a)).state_dict()
    result = run_in_process(["merge", "--models", a, b, "--weights", "1", "0", "-o", tmp_path / "out", "--quiet"])
    assert result.returncode == 0, result
    merged = read_folder_tensors(tmp_path / "out")
    assert merged and all(merged[k].equal(loaded[k]) for k in merged if k in loaded)


@pytest.fixture
def sharded_pair(tmp_path):
    return (make_bert(tmp_path / "sa", seed=3, shard_size="20KB", tokenizer=False),
            make_bert(tmp_path / "sb", seed=4, shard_size="20KB", tokenizer=False))


def edit_index(folder, change):
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    change(index)
    path.write_text(json.dumps(index))




CASES = {
    "weight_map a list": (lambda i: i.update(weight_map=list(i["weight_map"].items())), "weight_map"),
    "weight_map names a number": (lambda i: i["weight_map"].update({next(iter(i["weight_map"])): 3}), "3"),
    "weight_map missing": (lambda i: i.pop("weight_map"), "weight_map"),
    "index not an object": (lambda i: (i.clear(), i.update(x=1)), "weight_map"),
    "tensor in the wrong shard": (lambda i: i["weight_map"].update(  # a tensor of the first shard, put in the last
        {k: max(i["weight_map"].values()) for k, v in list(i["weight_map"].items()) if v == min(i["weight_map"].values())}),
        "does not hold it"),
    "shard missing": (lambda i: i["weight_map"].update({next(iter(i["weight_map"])): "gone.safetensors"}),
                      "gone.safetensors"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_shard_index_is_one_error_line(sharded_pair, tmp_path, case):
    a, b = sharded_pair
    change, named = CASES[case]
    edit_index(a, change)
    out = tmp_path / "out"
    refuse(["merge", "--models", a, b, "-o", out, "--quiet"], inputs=[a, b], outputs=[out], contains=named)


def test_a_tensor_in_two_shards_is_refused(sharded_pair, tmp_path):
    from safetensors.torch import load_file, save_file

    a, b = sharded_pair
    shards = sorted(a.glob("model-*.safetensors"))
    first, second = load_file(str(shards[0])), load_file(str(shards[1]))
    name = next(iter(first))
    second[name] = first[name].clone()
    save_file(second, str(shards[1]), metadata={"format": "pt"})
    out = tmp_path / "out"
    refuse(["merge", "--models", a, b, "-o", out, "--quiet"], inputs=[a, b], outputs=[out], contains="two shards")
