"""Recipes are bounded (item 4: no YAML anchors or aliases, no deep nesting), and every door refuses
what ``cocktail run`` refuses (item 17): ``cocktail recipe`` prints no recipe that would not run, and
``cocktail inspect`` calls nothing mergeable that ``merge`` then refuses."""

from __future__ import annotations

import json

import pytest
import yaml

from cocktail.io.bounded_yaml import MAX_DEPTH
from hostile.conftest import refuse, run_in_process

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


BOUNDS = [
    ("alias bomb", BOMB, 1),
    ("recursive alias", "models: [a, b]\nx: &a [*a]\n", 2),
    ("anchor", "models: &m\n  - ./a\n  - ./b\n", 1),
    ("alias of a model", "models:\n  - &one ./a\n  - *one\n", 2),
    ("deep nesting", "models: " + "[" * 2000 + "]" * 2000 + "\n", 1),
]


@pytest.mark.parametrize("case, text, line", BOUNDS, ids=[case for case, _, _ in BOUNDS])
def test_a_recipe_with_aliases_or_deep_nesting_is_one_error_line(tmp_path, monkeypatch, case, text, line):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    composed = []  # every node PyYAML composes: the refusal comes before the bomb or the depth is built
    compose = yaml.composer.Composer.compose_node
    monkeypatch.setattr(yaml.composer.Composer, "compose_node",
                        lambda self, parent, index: composed.append(1) or compose(self, parent, index))
    result = refuse(["run", recipe, "--dry-run"], inputs=[recipe], contains=f"r.yaml:{line}:")
    assert 0 < len(composed) <= MAX_DEPTH + 1
    assert ("nested more than" if case == "deep nesting" else "anchors and aliases") in result.line


def test_a_set_value_with_an_alias_is_refused(models, tmp_path):
    a, b = models
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"models: [{a}, {b}]\n")
    refuse(["run", recipe, "--dry-run", "--set", "parameters=&p {t: *p}"], inputs=[recipe],
           contains="anchors and aliases")


def test_a_model_card_with_deep_nesting_or_aliases_is_ignored(models, tmp_path):
    a, b = models
    (a / "README.md").write_text("---\nlicense: " + "[" * 3000 + "]" * 3000 + "\n---\nA card.\n")
    (b / "README.md").write_text("---\n" + BOMB + "---\nA card.\n")
    result = run_in_process(["merge", "--models", a, b, "-o", tmp_path / "out", "--quiet"])
    assert result.returncode == 0, result


def door_case(case, a, b):
    """Options of a merge that `cocktail run` refuses, and what the refusal says."""
    return {
        "weights sum to 1.2": (["--models", a, b, "--weights", "0.6", "0.6"], "sum to 1.2"),
        "negative weight with ties": (["--models", a, b, "--weights", "-0.5", "1.5", "--method", "ties",
                                       "--base", a], "negative"),
        "missing model": (["--models", a, "nope-not-here"], "nope-not-here"),
        "missing local model": (["--models", a, "./nope"], "nope"),
    }[case]


@pytest.mark.parametrize("case", ["weights sum to 1.2", "negative weight with ties", "missing model",
                                  "missing local model"])
def test_cocktail_recipe_refuses_what_cocktail_run_refuses(models, tmp_path, case):
    a, b = models
    options, says = door_case(case, a, b)
    printed = refuse(["recipe", *options, "--output", tmp_path / "out"], inputs=[a, b], cwd=tmp_path, contains=says)
    assert printed.stdout == ""
    recipe = tmp_path / "r.yaml"
    ok = run_in_process(["recipe", "--models", a, b, "--output", tmp_path / "out"], cwd=tmp_path)
    assert ok.returncode == 0, ok
    recipe.write_text(ok.stdout)
    args = {"weights sum to 1.2": ["--set", "models.0.weight=0.6", "--set", "models.1.weight=0.6"],
            "negative weight with ties": ["--set", "models.0.weight=-0.5", "--set", "models.1.weight=1.5",
                                          "--set", "merge_method=ties", "--set", f"base_model={a}"],
            "missing model": ["--set", "models.1.path=nope-not-here"],
            "missing local model": ["--set", "models.1.path=./nope"]}[case]
    refuse(["run", recipe, "--dry-run", *args], inputs=[a, b], cwd=tmp_path, outputs=[tmp_path / "out"], contains=says)


def spoil_for_inspect(case, a):
    if case == "model_type a list":
        config = json.loads((a / "config.json").read_text())
        config["model_type"] = ["bert"]
        (a / "config.json").write_text(json.dumps(config))
    elif case == "negative offsets":
        import struct

        raw = (a / "model.safetensors").read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + size])
        name = next(k for k in header if k != "__metadata__")
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin - 4, end - 4]
        body = json.dumps(header).encode()
        (a / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + size:])
    elif case == "modules.json [1,2]":
        (a / "modules.json").write_text("[1, 2]")


@pytest.mark.parametrize("case", ["model_type a list", "negative offsets", "modules.json [1,2]"])
def test_inspect_never_calls_mergeable_what_merge_refuses(models, tmp_path, case):
    a, b = models
    spoil_for_inspect(case, a)
    refuse(["merge", "--models", a, b, "-o", tmp_path / "out", "--quiet"], inputs=[a, b], outputs=[tmp_path / "out"])
    inspected = run_in_process(["inspect", a, b])
    assert inspected.returncode != 0 and "mergeable: yes" not in inspected.stdout, inspected
