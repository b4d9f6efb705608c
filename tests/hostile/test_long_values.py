"""A value quoted from an input in an error is cut, so an error stays one short line however long the
value (issue 20, item 11: a 30 MB error line)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from cocktail.errors import LINE_LIMIT, few_names, quoted
from hostile.conftest import refuse

HUGE = 10_000_000


def test_quoted_and_few_names_cut_what_they_show():
    assert len(quoted("x" * HUGE)) < 300 and "10,000,000 characters" in quoted("x" * HUGE)
    assert len(quoted([["y" * HUGE] * 1000] * 1000)) < 500
    assert "digits" in quoted(int("9" * 4000) * 10 ** 5000)  # more digits than Python converts to text
    assert len(few_names(["z" * HUGE, "b"])) < 300


def long_config_value(a):
    config = json.loads((a / "config.json").read_text())
    config["architectures"] = [1, "A" * HUGE]  # not a list of names: the error quotes it
    (a / "config.json").write_text(json.dumps(config))
    return "architectures"


def long_module(a):
    (a / "modules.json").write_text(json.dumps(["m" * HUGE]))
    return "modules.json"


def long_shard_name(a):
    names = list(load_file(str(a / "model.safetensors")))
    (a / "model.safetensors").rename(a / "kept.safetensors")
    (a / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: "s" * HUGE for n in names}}))
    return "lists shard"


def long_tensor_name(a):
    tensors = load_file(str(a / "model.safetensors"))
    tensors["t" * 1_000_000] = torch.zeros(2)
    save_file(tensors, str(a / "model.safetensors"), metadata={"format": "pt"})
    return "ttt"


CASES = {"config value": long_config_value, "modules.json entry": long_module, "shard name": long_shard_name,
         "tensor name": long_tensor_name}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_error_quoting_a_huge_value_is_one_short_line(models, tmp_path, case):
    a, b = models
    named = CASES[case](a)
    out = tmp_path / "out"
    result = refuse(["merge", "--models", a, b, "-o", out, "--quiet"], inputs=[a, b], outputs=[out], contains=named)
    assert len(result.line) <= LINE_LIMIT + 100, len(result.line)
