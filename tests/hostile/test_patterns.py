"""Patterns from input files cannot hang the process (issue 20, item 4): an adapter's ``rank_pattern`` /
``alpha_pattern`` keys and a recipe's per-tensor ``filter`` are matched by RE2, which never backtracks.
``([a-z0-9_.]+)+X`` ran at full CPU for as long as one cared to wait under Python's ``re``; here the
merges that hold it run to the end (in a subprocess with a timeout, so a regression fails instead of
hanging the suite), and a pattern RE2 cannot express (a backreference, a lookbehind) is one error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, make_bert, read_folder_tensors

from hostile.conftest import refuse

EXPLOSIVE = "([a-z0-9_.]+)+X"  # exponential for a backtracking engine on any dotted tensor name without an X
FINISH_WITHIN = 300  # seconds; each merge here takes a few seconds, a backtracking one would take years


def run_bounded(*args, cwd=None) -> subprocess.CompletedProcess:
    """``cocktail ARGS`` in a subprocess that is killed after ``FINISH_WITHIN`` seconds (then the test fails)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        return subprocess.run([sys.executable, "-m", "cocktail", *map(str, args), "--quiet"], capture_output=True,
                              text=True, env=env, cwd=cwd, timeout=FINISH_WITHIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"cocktail {' '.join(map(str, args))} did not finish in {FINISH_WITHIN} s: a pattern hangs it")


@pytest.fixture
def lora(tmp_path):
    """A LoRA adapter of a tiny BERT (rank 2 for 'value' modules), and the merge PEFT makes of it."""
    peft = pytest.importorskip("peft")
    from conftest import make_lora

    base = make_bert(tmp_path / "base", seed=1)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], rank_pattern={"value": 2})
    expected = make_lora(base, tmp_path / "lora", config, "BertModel", seed=3)
    return tmp_path / "lora", expected


def add_patterns(adapter, key: str, patterns: dict) -> None:
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config[key] = {**patterns, **config.get(key, {})}  # the new pattern first: it is tried on every module
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("key", ["rank_pattern", "alpha_pattern"])
def test_an_explosive_adapter_pattern_is_matched_in_linear_time_as_peft_matches_it(lora, tmp_path, key):
    """The pattern matches no module (PEFT's ``(.*\\.)?(KEY)$``), so the merge is PEFT's own."""
    adapter, expected = lora
    add_patterns(adapter, key, {EXPLOSIVE: 64})
    result = run_bounded("merge", "--models", adapter, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    out = read_folder_tensors(tmp_path / "out")
    assert out and all(t.shape == expected[n].shape and (t - expected[n]).abs().max() < 1e-6 for n, t in out.items())


def test_an_explosive_recipe_filter_runs_to_the_end(models, tmp_path):
    a, b = models
    recipe = tmp_path / "r.yaml"
    weight = f"[{{filter: '{EXPLOSIVE}', value: 0.9}}, {{value: 0.5}}]"
    recipe.write_text(f"models:\n  - {{path: {a}, weight: {weight}}}\n  - {{path: {b}, weight: {weight}}}\n"
                      f"output: {tmp_path / 'out'}\n")
    result = run_bounded("run", recipe)
    assert result.returncode == 0, result.stderr
    assert "is never used: it matches no merged tensor" in result.stderr  # matched (and found nothing) in full
    assert (tmp_path / "out" / "model.safetensors").is_file()


BEYOND_RE2 = [("backreference", r"(query)\.\1"), ("lookbehind", r"(?<=self\.)query"), ("lookahead", r"q(?=uery)")]


@pytest.mark.parametrize("case, pattern", BEYOND_RE2, ids=[c for c, _ in BEYOND_RE2])
def test_a_filter_re2_cannot_express_is_one_error_line(models, tmp_path, case, pattern):
    a, b = models
    recipe = tmp_path / "r.yaml"
    weight = json.dumps([{"filter": pattern, "value": 0.9}, {"value": 0.5}])
    recipe.write_text(f"models:\n  - {{path: {a}, weight: {weight}}}\n  - {{path: {b}, weight: {weight}}}\n"
                      f"output: {tmp_path / 'out'}\n")
    result = refuse(["run", recipe], inputs=[a, b, recipe], outputs=[tmp_path / "out"],
                    contains="models[0].weight[0].filter")
    assert "RE2" in result.line and "r.yaml:2" in result.line


@pytest.mark.parametrize("case, pattern", BEYOND_RE2, ids=[c for c, _ in BEYOND_RE2])
def test_an_adapter_pattern_re2_cannot_express_is_one_error_line(lora, tmp_path, case, pattern):
    adapter, _ = lora
    add_patterns(adapter, "rank_pattern", {pattern: 2})
    result = refuse(["merge", "--models", adapter, "-o", tmp_path / "out"], inputs=[adapter],
                    outputs=[tmp_path / "out"], contains="rank_pattern")
    assert "RE2" in result.line and str(adapter) in result.line
