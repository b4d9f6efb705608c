"""``--verify`` covers everything the output copies: config, tokenizer and sentence-transformers files,
not only the weights; a rerun without it warns when they changed."""

import json

import pytest
import yaml
from conftest import make_bert, run_cli

import cocktail


@pytest.fixture
def merged(two_berts, tmp_path):
    a, b = two_berts
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    return a, b, tmp_path / "out" / "cocktail_recipe.yaml"


def _rerun(recipe_file, tmp_path, name="again"):
    recipe = cocktail.Recipe.from_yaml(recipe_file)
    recipe.output = str(tmp_path / name)
    return cocktail.run(recipe, verify=True)


def test_the_recipe_records_every_side_file_copied(merged):
    a, _, recipe_file = merged
    side = yaml.safe_load(recipe_file.read_text())["provenance"]["side_files"]
    assert side["from"] == str(a)
    assert {"config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"} <= set(side["sha256"])
    import hashlib
    assert side["sha256"]["config.json"] == hashlib.sha256((a / "config.json").read_bytes()).hexdigest()


def test_a_changed_config_is_refused_by_verify(merged, tmp_path):
    a, _, recipe_file = merged
    config = json.loads((a / "config.json").read_text())
    config["hidden_dropout_prob"] = 0.5  # same weights, another model
    (a / "config.json").write_text(json.dumps(config))
    refused = run_cli("run", recipe_file, "--output", tmp_path / "again", "--verify")
    assert refused.returncode == 2, refused
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "error: input changed since the recipe was written" in refused.stderr
    assert str(a / "config.json") in refused.stderr
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("change", ["edit", "delete", "add"])
def test_tokenizer_files_edited_deleted_or_added_are_refused(merged, tmp_path, change):
    a, _, recipe_file = merged
    if change == "edit":
        (a / "vocab.txt").write_text((a / "vocab.txt").read_text() + "extra\n")
        expected = r"vocab.txt has sha256"
    elif change == "delete":
        (a / "tokenizer_config.json").unlink()
        expected = r"tokenizer_config.json is missing"
    else:
        (a / "added_tokens.json").write_text('{"new": 200}')
        expected = r"added_tokens.json is a file the output would copy that the recipe does not record"
    with pytest.raises(cocktail.InputChangedError, match=expected):
        _rerun(recipe_file, tmp_path)
    assert not (tmp_path / "again").exists()


def _st_folder(root, seed):
    """A sentence-transformers layout by hand: Transformer in the top folder, mean pooling in 1_Pooling."""
    make_bert(root, seed=seed)
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                "pooling_mode_mean_tokens": True}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    return root


def test_sentence_transformers_module_files_are_covered(tmp_path):
    a, b = _st_folder(tmp_path / "st-a", 1), _st_folder(tmp_path / "st-b", 2)
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out")
    recorded = yaml.safe_load((tmp_path / "out" / "cocktail_recipe.yaml").read_text())["provenance"]["side_files"]
    assert {"modules.json", "1_Pooling/config.json"} <= set(recorded["sha256"])
    (a / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                             "pooling_mode_cls_token": True}))
    with pytest.raises(cocktail.InputChangedError, match=r"1_Pooling/config.json has sha256"):
        _rerun(tmp_path / "out" / "cocktail_recipe.yaml", tmp_path)


def test_config_from_is_the_folder_verified(two_berts, tmp_path):
    a, b = two_berts
    other = make_bert(tmp_path / "other", seed=3)
    cocktail.merge([a, b], [0.5, 0.5], tmp_path / "out", config_from=other)
    recipe_file = tmp_path / "out" / "cocktail_recipe.yaml"
    (a / "vocab.txt").write_text("not copied, not checked\n")  # the first model's side files are not used
    _rerun(recipe_file, tmp_path, "first")
    (other / "vocab.txt").write_text((other / "vocab.txt").read_text() + "extra\n")
    with pytest.raises(cocktail.InputChangedError, match=rf"{other}/vocab.txt has sha256"):
        _rerun(recipe_file, tmp_path, "second")


def test_unchanged_inputs_verify_and_count_side_files(merged, tmp_path):
    from cocktail.io.provenance import verify_inputs

    _, _, recipe_file = merged
    side = yaml.safe_load(recipe_file.read_text())["provenance"]["side_files"]["sha256"]
    assert verify_inputs(cocktail.Recipe.from_yaml(recipe_file)) == 2 + len(side)
    _rerun(recipe_file, tmp_path)
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == \
        (recipe_file.parent / "model.safetensors").read_bytes()


def test_a_recipe_from_before_side_files_were_recorded_still_verifies_its_weights(merged, tmp_path):
    a, _, recipe_file = merged
    data = yaml.safe_load(recipe_file.read_text())
    del data["provenance"]["side_files"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(data))
    _rerun(tmp_path / "old.yaml", tmp_path)


def test_a_rerun_without_verify_warns_that_side_files_changed(merged, tmp_path):
    a, _, recipe_file = merged
    (a / "vocab.txt").write_text((a / "vocab.txt").read_text() + "extra\n")
    recipe = cocktail.Recipe.from_yaml(recipe_file)
    recipe.output = str(tmp_path / "again")
    with pytest.warns(cocktail.CocktailWarning, match=r"side files of .* changed since its recipe was written "
                                                      r"\(vocab.txt\).*verify=True"):
        cocktail.run(recipe)
