"""Reading models: every layout a user has on disk gives the same names, dtypes and tensors."""

import json
import shutil

import pytest
import torch
from conftest import make_bert, read_folder_tensors, run_cli

from cocktail.errors import InputError
from cocktail.io.checkpoints import TRANSFORMER, Checkpoint


def test_single_safetensors_folder_reads_lazily_exact_tensors(tmp_path):
    folder = make_bert(tmp_path / "m", seed=3)
    expected = read_folder_tensors(folder)
    with Checkpoint.open(folder) as ckpt:
        assert ckpt.layout == "safetensors"
        assert ckpt.model_type == "bert" and ckpt.architecture == "BertModel"
        infos = ckpt.infos()
        assert set(infos) == set(expected)
        for name, tensor in expected.items():
            assert infos[name].shape == tuple(tensor.shape) and infos[name].dtype == tensor.dtype
            assert torch.equal(ckpt.read(TRANSFORMER, name), tensor)


def test_sharded_safetensors_folder(tmp_path):
    single = make_bert(tmp_path / "single", seed=4)
    sharded = make_bert(tmp_path / "sharded", seed=4, shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    with Checkpoint.open(sharded) as ckpt:
        assert ckpt.layout == "sharded safetensors"
        assert len(ckpt.weight_files()) > 1
        for name, tensor in read_folder_tensors(single).items():
            assert torch.equal(ckpt.read(TRANSFORMER, name), tensor)


def test_legacy_pytorch_bin_is_read_with_weights_only(tmp_path):
    ref = make_bert(tmp_path / "ref", seed=5)
    legacy = make_bert(tmp_path / "legacy", seed=5, bin_format=True)
    assert (legacy / "pytorch_model.bin").exists()
    with Checkpoint.open(legacy) as ckpt:
        assert ckpt.layout == "pytorch .bin"
        for name, tensor in read_folder_tensors(ref).items():
            assert torch.equal(ckpt.read(TRANSFORMER, name), tensor)


def test_bin_that_runs_code_is_refused(tmp_path):
    folder = make_bert(tmp_path / "evil", seed=1)
    (folder / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(InputError, match="cannot be loaded safely"):
        Checkpoint.open(folder).infos()


def test_path_to_a_single_safetensors_file(tmp_path):
    folder = make_bert(tmp_path / "m", seed=6)
    with Checkpoint.open(folder / "model.safetensors") as ckpt:
        assert ckpt.model_type == "bert"  # config.json beside the file is used
        assert set(ckpt.infos()) == set(read_folder_tensors(folder))


def test_sentence_transformers_folder_with_transformer_in_subfolder_and_dense(tmp_path):
    root = tmp_path / "st"
    make_bert(root / "0_Transformer", seed=7)
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True}))
    (root / "2_Dense").mkdir()
    from safetensors.torch import save_file

    save_file({"linear.weight": torch.randn(16, 32)}, str(root / "2_Dense" / "model.safetensors"))
    modules = [
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (root / "modules.json").write_text(json.dumps(modules))
    with Checkpoint.open(root) as ckpt:
        assert ckpt.sentence_transformers
        assert set(ckpt.components) == {TRANSFORMER, "2_Dense"}
        assert ckpt.components[TRANSFORMER].rel_dir == "0_Transformer"
        assert ckpt.model_type == "bert"
        assert ckpt.infos("2_Dense")["linear.weight"].shape == (16, 32)


def test_real_minilm_sentence_transformers_layout(minilm_path):
    with Checkpoint.open(minilm_path) as ckpt:
        assert ckpt.sentence_transformers and ckpt.model_type == "bert"
        infos = ckpt.infos()
        assert infos["embeddings.word_embeddings.weight"].shape == (30522, 384)
        assert sum(i.numel for i in infos.values() if i.dtype.is_floating_point) > 22_000_000


def test_hub_id_resolves_from_local_cache(tmp_path, monkeypatch):
    source = make_bert(tmp_path / "src", seed=8)
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-bge" / "snapshots" / "0123abcd"
    shutil.copytree(source, snapshot)
    (cache / "models--acme--tiny-bge" / "refs").mkdir(parents=True)
    (cache / "models--acme--tiny-bge" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with Checkpoint.open("acme/tiny-bge") as ckpt:
        assert ckpt.source == "acme/tiny-bge"
        assert set(ckpt.infos()) == set(read_folder_tensors(source))


def test_hub_id_not_cached_offline_names_the_id(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as refused:
        Checkpoint.open("acme/not-there")
    assert str(refused.value) == ("model not found: acme/not-there is not a local folder, and as a hub id it is not in "
                                  "the local Hugging Face cache (HF_HUB_OFFLINE=1: nothing is downloaded)")


def test_hub_id_with_the_hub_unreachable_says_so_in_a_sentence(tmp_path):
    """Online, with the hub unreachable (an endpoint on a closed local port: nothing leaves the machine)."""
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    result = run_cli("inspect", "acme/not-there", env=env, cwd=tmp_path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: model not found: acme/not-there is not a local folder, and as a hub id it is not in the local Hugging "
        "Face cache and the hub cannot be reached ("), result
    assert "Connection refused" in lines[0] and "Got:" not in lines[0], result  # the client's error, in a sentence


@pytest.mark.parametrize("make_bad, message", [
    (lambda d: d.mkdir(), "no weights found"),
    (lambda d: (d.mkdir(), (d / "model.safetensors").write_bytes(b"\x01\x02")), "not a safetensors file"),
])
def test_unreadable_folders_give_clear_errors(tmp_path, make_bad, message):
    folder = tmp_path / "bad"
    make_bad(folder)
    (folder / "config.json").write_text("{}")
    with pytest.raises(InputError, match=message):
        Checkpoint.open(folder).infos()


def test_truncated_safetensors_is_reported(tmp_path):
    folder = make_bert(tmp_path / "m", seed=9)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        Checkpoint.open(folder)


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(InputError, match="model not found: ./nope"):
        Checkpoint.open("./nope")
