"""The sha256 cache: a repeated merge of the same inputs takes their hashes from it, but only while
every key of a file (real path, size, mtime_ns, ctime_ns, inode, device) still matches; a corrupt or
unwritable cache is ignored; ``--verify`` never reads it."""

import hashlib
import json
import os
import shutil

import pytest
import yaml
from conftest import make_bert

import cocktail
from cocktail.io import hashing


@pytest.fixture
def settled(monkeypatch):
    """Files made by the test count as settled at once (the cache skips files changed in the last 2 s)."""
    monkeypatch.setattr(hashing, "RECENT_NS", 0)


def _real_sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache(folder):
    return json.loads((folder / hashing.CACHE_FILE).read_text())


def _recorded(output):
    data = yaml.safe_load((output / "cocktail_recipe.yaml").read_text())
    return [entry["sha256"]["model.safetensors"] for entry in data["provenance"]["inputs"]]


def _poison(cache_folder, path, digest="0" * 64, key_index=None):
    """Give ``path``'s cache entry a wrong digest (and, with ``key_index``, one key that no longer matches)."""
    data = _cache(cache_folder)
    entry = data["files"][os.path.realpath(path)]
    entry["sha256"] = digest
    if key_index is not None:
        entry["key"][key_index] += 1
    (cache_folder / hashing.CACHE_FILE).write_text(json.dumps(data))


def test_a_merge_remembers_each_input_and_the_next_one_trusts_it(two_berts, tmp_path, hash_cache, settled):
    a, b = two_berts
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "first")
    files = [a / "model.safetensors", b / "model.safetensors"]
    assert _recorded(tmp_path / "first") == [_real_sha(f) for f in files]
    entries = _cache(hash_cache)["files"]
    assert {os.path.realpath(f) for f in files} <= set(entries)
    assert entries[os.path.realpath(files[0])]["sha256"] == _real_sha(files[0])
    _poison(hash_cache, files[0])  # every key still matches: the cached digest is used, the file is not read
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "second")
    assert _recorded(tmp_path / "second") == ["0" * 64, _real_sha(files[1])]


@pytest.mark.parametrize("key_index", range(5), ids=["size", "mtime_ns", "ctime_ns", "inode", "device"])
def test_any_key_that_differs_means_the_file_is_hashed_again(two_berts, tmp_path, hash_cache, settled, key_index):
    a, b = two_berts
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "first")
    _poison(hash_cache, a / "model.safetensors", key_index=key_index)
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "second")
    assert _recorded(tmp_path / "second")[0] == _real_sha(a / "model.safetensors")
    assert _cache(hash_cache)["files"][os.path.realpath(a / "model.safetensors")]["sha256"] == \
        _real_sha(a / "model.safetensors")  # and the entry is mended


def test_a_changed_file_is_hashed_again(two_berts, tmp_path, hash_cache, settled):
    from safetensors.torch import load_file, save_file

    a, b = two_berts
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "first")
    tensors = load_file(str(a / "model.safetensors"))
    tensors["pooler.dense.bias"][0] += 1
    save_file(tensors, str(a / "model.safetensors"), metadata={"format": "pt"})
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "second")
    assert _recorded(tmp_path / "second")[0] == _real_sha(a / "model.safetensors") != _recorded(tmp_path / "first")[0]
    # a file replaced by a copy of itself (same bytes, new inode) is hashed again too, to the same digest
    shutil.copy2(a / "model.safetensors", tmp_path / "copy")
    os.replace(tmp_path / "copy", a / "model.safetensors")
    _poison(hash_cache, b / "model.safetensors")  # b untouched: still trusted
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "third")
    assert _recorded(tmp_path / "third") == [_real_sha(a / "model.safetensors"), "0" * 64]


def test_files_changed_in_the_last_seconds_are_not_remembered(two_berts, tmp_path, hash_cache):
    a, b = two_berts  # just written: a change within the clock's resolution could go unseen
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    entries = _cache(hash_cache)["files"] if (hash_cache / hashing.CACHE_FILE).exists() else {}
    assert os.path.realpath(a / "model.safetensors") not in entries


@pytest.mark.parametrize("content", [b"\x00\xff garbage", b"[1, 2]", b'{"version": 1, "files": {"x": {"key": [1], '
                                                                   b'"sha256": 5}}}', b'{"version": 99, "files": {}}'])
def test_a_corrupt_cache_is_ignored_and_rebuilt(two_berts, tmp_path, hash_cache, settled, content):
    a, b = two_berts
    (hash_cache / hashing.CACHE_FILE).write_bytes(content)
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    assert _recorded(tmp_path / "out") == [_real_sha(a / "model.safetensors"), _real_sha(b / "model.safetensors")]
    data = _cache(hash_cache)
    assert data["version"] == hashing.CACHE_VERSION and os.path.realpath(a / "model.safetensors") in data["files"]
    assert [p.name for p in hash_cache.iterdir()] == [hashing.CACHE_FILE]  # no temporary file left


def test_an_unwritable_cache_costs_nothing_but_the_hashing(two_berts, tmp_path, monkeypatch, settled):
    a, b = two_berts
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(hashing.CACHE_ENV, str(blocker / "cocktail"))
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    assert _recorded(tmp_path / "out")[0] == _real_sha(a / "model.safetensors")
    assert blocker.read_text() == "a file where the cache folder would be"


def test_verify_never_trusts_the_cache(two_berts, tmp_path, hash_cache, settled):
    """A cache entry that vouches for a changed file (keys updated, digest kept) fools a merge but not --verify."""
    from safetensors.torch import load_file, save_file

    a, b = two_berts
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    recorded = _recorded(tmp_path / "out")[0]
    tensors = load_file(str(a / "model.safetensors"))
    tensors["pooler.dense.bias"][0] += 1
    save_file(tensors, str(a / "model.safetensors"), metadata={"format": "pt"})
    real, key = hashing._file_key(a / "model.safetensors")
    data = _cache(hash_cache)
    data["files"][real] = {"key": key, "sha256": recorded}
    (hash_cache / hashing.CACHE_FILE).write_text(json.dumps(data))
    recipe = cocktail.Recipe.from_yaml(tmp_path / "out" / "cocktail_recipe.yaml")
    recipe.output = str(tmp_path / "again")
    with pytest.raises(cocktail.InputChangedError, match=r"model.safetensors has sha256"):
        cocktail.run(recipe, verify=True)


def test_where_the_cache_lives(monkeypatch, tmp_path):
    monkeypatch.delenv(hashing.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hashing.cache_folder() == tmp_path / "xdg" / "cocktail"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG spec says to ignore a relative one
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hashing.cache_folder() == tmp_path / "home" / ".cache" / "cocktail"
    monkeypatch.setenv(hashing.CACHE_ENV, str(tmp_path / "mine"))
    assert hashing.cache_folder() == tmp_path / "mine"
    monkeypatch.setenv(hashing.CACHE_ENV, "")
    assert hashing.cache_folder() is None


def test_sharded_inputs_are_hashed_file_by_file(tmp_path, settled):
    a = make_bert(tmp_path / "a", seed=1, shard_size="20KB")
    b = make_bert(tmp_path / "b", seed=2, shard_size="20KB")
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    data = yaml.safe_load((tmp_path / "out" / "cocktail_recipe.yaml").read_text())
    shards = sorted(p.name for p in a.glob("*.safetensors"))
    assert len(shards) > 1
    assert data["provenance"]["inputs"][0]["sha256"] == {name: _real_sha(a / name) for name in shards}
