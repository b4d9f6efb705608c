"""A tensor in a shard that its index's ``weight_map`` does not list is ignored, with a warning, as
transformers ignores it; a tensor held in memory without readable values (meta, sparse) is a cocktail
error naming it, not a NotImplementedError (issue 20, item 11)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_bert, read_folder_tensors
from safetensors.torch import load_file, save_file
from transformers import BertModel

import cocktail
from cocktail.errors import InputError
from hostile.conftest import run_in_process


def test_a_tensor_the_weight_map_does_not_list_is_ignored_as_transformers_ignores_it(tmp_path):
    a, b = (make_bert(tmp_path / n, seed=s, shard_size="20KB", tokenizer=False) for n, s in (("a", 3), ("b", 4)))
    for folder in (a, b):
        shard = sorted(folder.glob("model-*.safetensors"))[0]
        tensors = load_file(str(shard))
        tensors["smuggled.weight"] = torch.full((4,), 7.0)
        save_file(tensors, str(shard), metadata={"format": "pt"})
    loaded = BertModel.from_pretrained(str(a)).state_dict()
    result = run_in_process(["merge", "--models", a, b, "--weights", "1", "0", "-o", tmp_path / "out", "--quiet"])
    assert result.returncode == 0, result
    assert "warning:" in result.stderr and "smuggled.weight" in result.stderr and "weight_map" in result.stderr
    merged = read_folder_tensors(tmp_path / "out")
    assert "smuggled.weight" not in merged and "smuggled.weight" not in loaded
    assert merged.keys() == {k for k in read_folder_tensors(a) if k != "smuggled.weight"}
    inspect = run_in_process(["inspect", a, "--json"])
    assert inspect.returncode == 0 and "smuggled" not in inspect.stdout


@pytest.mark.parametrize("kind", ["meta", "sparse COO", "sparse CSR"])
def test_merge_state_dicts_refuses_a_tensor_without_dense_values(kind):
    weight = {"meta": lambda: torch.empty(2, 2, device="meta"), "sparse COO": lambda: torch.eye(2).to_sparse(),
              "sparse CSR": lambda: torch.eye(2).to_sparse_csr()}[kind]()
    with pytest.raises(InputError, match=r"tensor 'layer\.weight' is (on the meta device|a sparse tensor)"):
        cocktail.merge_state_dicts([{"layer.weight": weight}, {"layer.weight": torch.zeros(2, 2)}])
