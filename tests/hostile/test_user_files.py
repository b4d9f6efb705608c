"""Recipes and files as a user has them (issue 20, item 16): a merged folder is a recipe, a file that is
no recipe says so once, a ``--set`` typo gets a did-you-mean, the shipped gzipped SciFact examples
weigh embedders (whose loss needs no ``neg``), and a TSV where examples go says what format is wanted."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import REPO

from cocktail.errors import InputError
from cocktail.fewshot.examples import load_examples
from hostile.conftest import refuse, run_in_process

SCIFACT_TRAIN = REPO / "examples" / "data" / "scifact-train.jsonl.gz"
GOOD = {"query": "the sun", "pos": ["sun moon"], "neg": ["cat dog"]}


def test_run_on_a_merged_folder_runs_its_recipe(models, tmp_path):
    a, b = models
    made = run_in_process(["merge", "--models", a, b, "--weights", "0.3", "0.7", "-o", tmp_path / "made", "--quiet"])
    assert made.returncode == 0, made
    again = run_in_process(["run", tmp_path / "made", "-o", tmp_path / "again", "--verify", "--json", "--quiet"])
    assert again.returncode == 0, again
    assert json.loads(again.stdout)["weights"] == [0.3, 0.7]
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "made" / "model.safetensors").read_bytes()


def test_run_on_a_folder_without_a_recipe_is_one_line(models, tmp_path):
    a, _ = models
    refuse(["run", a, "-o", tmp_path / "out"], inputs=[a], outputs=[tmp_path / "out"],
           contains=f"{a} is a folder without a cocktail_recipe.yaml")


def test_a_json_file_that_is_no_recipe_says_so_once(models, tmp_path):
    a, _ = models
    config = a / "config.json"
    result = refuse(["run", config, "-o", tmp_path / "out"], inputs=[a], outputs=[tmp_path / "out"],
                    contains="not a cocktail recipe")
    assert result.line.count("merge_method") == 1 and len(result.line) < 400, result


def test_several_unknown_keys_are_one_problem_listing_the_keys_once(models, tmp_path):
    a, b = models
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"models: [{a}, {b}]\n" + "".join(f"extra_{i}: 1\n" for i in range(20)) + "mergemethod: ties\n")
    result = refuse(["run", recipe, "-o", tmp_path / "out"], inputs=[a, b, recipe], outputs=[tmp_path / "out"],
                    contains="21 unknown keys")
    assert result.line.count("allow_nonfinite") == 1 and "did you mean 'merge_method'" in result.line, result
    assert "r.yaml:2" in result.line and len(result.line) < 500, result


def test_a_set_typo_in_the_first_key_gets_a_did_you_mean(models, tmp_path):
    a, b = models
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"models: [{a}, {b}]\n")
    refuse(["run", recipe, "--dry-run", "--set", "modls.1.weight=0.3"], inputs=[a, b, recipe],
           contains="r.yaml: modls (from --set): unknown key; did you mean 'models'?")


def test_the_shipped_scifact_examples_weigh_embedders_without_negatives(models):
    """Its lines have no ``neg``: the encoder loss ranks each query's positive against the other
    queries' positives (in-batch negatives), so the file is read as it is shipped, gzipped."""
    with gzip.open(SCIFACT_TRAIN, "rt", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    assert lines and all("neg" not in line for line in lines)
    examples = load_examples(SCIFACT_TRAIN, "encoder").examples
    assert [e.query for e in examples] == [line["query"] for line in lines] and all(e.neg == () for e in examples)
    a, b = models
    result = run_in_process(["weights", "--models", a, b, "--examples", SCIFACT_TRAIN, "--json", "--quiet"])
    assert result.returncode == 0, result
    assert len(json.loads(result.stdout)["weights"]) == 2


@pytest.mark.parametrize("model_type", ["reranker", "llm-reranker"])
def test_a_reranker_still_needs_negatives_and_says_why(model_type):
    with pytest.raises(InputError, match=r"line 1: missing field 'neg' \(a .*reranker's loss ranks each query's "
                                         r"positive against its own negatives"):
        load_examples(SCIFACT_TRAIN, model_type)


@pytest.mark.parametrize("option", ["--keep", "--examples"])
def test_a_tsv_given_for_examples_says_what_format_is_expected(models, tmp_path, option):
    a, b = models
    examples = tmp_path / "few.jsonl"
    examples.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    tsv = tmp_path / "keep.tsv"
    tsv.write_text("the sun\tsun moon\nred car\tcar red\n")
    args = ["weights", "--models", a, b, "--examples", tsv if option == "--examples" else examples]
    args += ["--keep", tsv] if option == "--keep" else []
    result = refuse(args, inputs=[a, b, tsv, examples], contains="keep.tsv line 1: not JSON")
    assert "JSON Lines" in result.line and '"query"' in result.line, result
