"""``--force`` never removes a path the run reads, whatever option or recipe key names it: each key of
``schema.READ_PATH_KEYS`` is tried pointing inside the previous output, from a recipe and from the
command line (issue 20, item 2: a ``--keep`` file inside the old output was deleted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cocktail.recipe.schema import READ_PATH_KEYS
from hostile.conftest import refuse, run_in_process


def examples(path: Path) -> Path:
    path.write_text("\n".join(json.dumps({"query": q, "pos": [p], "neg": ["cat dog"]})
                              for q, p in (("the sun", "sun moon"), ("red car", "car red"))) + "\n")
    return path


def previous_output(a, b, tmp_path) -> Path:
    out = tmp_path / "out"
    assert run_in_process(["merge", "--models", a, b, "-o", out, "--quiet"]).returncode == 0
    return out


def recipe_reading(key: str, a: Path, b: Path, out: Path, tmp_path: Path) -> dict:
    """A recipe whose ``key`` names a path inside the previous output ``out``."""
    recipe = {"models": [{"path": str(a)}, {"path": str(b)}], "output": str(out)}
    few = {"examples": str(examples(tmp_path / "few.jsonl"))}
    if key == "models.*.path":
        recipe["models"][1]["path"] = str(shutil.copytree(b, out / "B"))
    elif key == "models.*.base":
        from conftest import make_lora
        from peft import LoraConfig

        make_lora(a, tmp_path / "lora", LoraConfig(r=2, lora_alpha=4, target_modules=["query"]), "BertModel")
        recipe["models"][1] = {"path": str(tmp_path / "lora"), "base": str(shutil.copytree(a, out / "base"))}
    elif key == "base_model":
        recipe.update(base_model=str(shutil.copytree(a, out / "base")), merge_method="task_arithmetic")
    elif key == "config_from":
        recipe["config_from"] = str(shutil.copytree(b, out / "config"))
    elif key == "weights_from.examples":
        recipe["weights_from"] = {"examples": str(examples(out / "few.jsonl"))}
    elif key == "weights_from.keep":
        recipe["weights_from"] = {**few, "keep": str(examples(out / "keep.jsonl"))}
    elif key == "models.*.examples":  # a data-aware merge: each model's statistics from its own examples
        recipe["merge_method"] = "regmean"
        recipe["models"][0]["examples"] = str(examples(out / "own.jsonl"))
        recipe["models"][1]["examples"] = few["examples"]
    return recipe


KEYS = [".".join(map(str, pattern)) for pattern, _, _ in READ_PATH_KEYS]


def test_every_key_that_names_a_path_is_tried():
    assert KEYS == ["models.*.path", "models.*.base", "base_model", "config_from", "weights_from.examples",
                    "weights_from.keep", "models.*.examples"], "a new key that names a path: add its case to recipe_reading()"


@pytest.mark.parametrize("key", KEYS)
def test_a_path_a_recipe_reads_inside_the_old_output_is_never_removed(models, tmp_path, key):
    a, b = models
    out = previous_output(a, b, tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_reading(key, a, b, out, tmp_path)))
    refuse(["run", recipe, "--force", "--quiet"], inputs=[a, b, out, recipe], contains="input")


def test_a_keep_file_inside_the_old_output_is_never_removed_from_the_command_line(models, tmp_path):
    a, b = models
    out = previous_output(a, b, tmp_path)
    keep = examples(out / "keep.jsonl")
    refuse(["merge", "--models", a, b, "--examples", examples(tmp_path / "few.jsonl"), "--keep", keep,
            "--search", "-o", out, "--force", "--quiet"], inputs=[a, b, out], contains="holds the input file")
