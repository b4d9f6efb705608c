"""Values at Python's own limits are refused in one line (issue 20, item 8), not reported as
``error: unexpected ...`` with exit 1: JSON nested a hundred thousand levels deep in any JSON file cocktail
reads (a ``RecursionError``), integers longer than Python converts in examples, data and recipes (a
``ValueError``), a ``--max-shard-size`` of 400 digits (an ``OverflowError``), ``--device meta``."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from cocktail.errors import QUOTE_LIMIT
from hostile.conftest import refuse

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 5000  # Python converts at most 4300 digits to an int
GOOD = {"query": "the sun", "pos": ["sun moon"], "neg": ["cat dog"]}


def jsonl(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


def spoil_config(a):
    (a / "config.json").write_text(DEEP)
    return "config.json"


def spoil_index(a):
    (a / "model.safetensors").rename(a / "model-00001-of-00001.safetensors")
    (a / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": ' + DEEP + "}")
    return "model.safetensors.index.json"


def spoil_modules(a):
    (a / "modules.json").write_text(DEEP)
    return "modules.json"


def spoil_adapter_config(a):
    (a / "adapter_config.json").write_text(DEEP)
    return "adapter_config.json"


def spoil_header(a):
    header = ('{"__metadata__": {"x": ' + "[" * 50_000 + "]" * 50_000 + "}}").encode()
    (a / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return "model.safetensors"


SPOILS = {"config.json": spoil_config, "index": spoil_index, "modules.json": spoil_modules,
          "adapter_config.json": spoil_adapter_config, "safetensors header": spoil_header}


@pytest.mark.parametrize("case", list(SPOILS))
def test_deep_json_in_a_model_folder_is_one_line_naming_the_file(models, tmp_path, case):
    a, b = models
    name = SPOILS[case](a)
    for command in (["merge", "--models", a, b, "-o", tmp_path / "out"], ["inspect", a, b]):
        result = refuse(command, inputs=[a, b], outputs=[tmp_path / "out"], contains=name)
        assert "nested too deeply" in result.line, result


@pytest.mark.parametrize("content", [jsonl(json.dumps(GOOD), DEEP), DEEP,
                                     jsonl(json.dumps(GOOD), json.dumps(GOOD)[:-1] + f', "x": {HUGE}}}')],
                         ids=["deep line", "deep file", "huge integer"])
def test_examples_at_pythons_limits_are_one_line(models, tmp_path, content):
    a, b = models
    examples = tmp_path / "few.jsonl"
    examples.write_text(content)
    for command in (["weights", "--models", a, b, "--examples", examples],
                    ["merge", "--models", a, b, "--examples", examples, "-o", tmp_path / "out"],
                    ["eval", "--models", a, "--data", examples]):
        result = refuse(command, inputs=[a, b, examples], outputs=[tmp_path / "out"], contains="few.jsonl")
        assert "nested too deeply" in result.line or "5000 digits" in result.line, result


@pytest.mark.parametrize("where", ["key", "--set", "--param"])
def test_a_huge_integer_in_a_recipe_is_one_line(models, tmp_path, where):
    a, b = models
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"models: [{a}, {b}]\noutput: {tmp_path / 'out'}\n" + (f"seed: {HUGE}\n" if where == "key" else ""))
    if where == "--param":
        args = ["merge", "--models", a, b, "--method", "slerp", "--param", f"t={HUGE}", "-o", tmp_path / "out"]
    else:
        args = ["run", recipe] + (["--set", f"seed={HUGE}"] if where == "--set" else [])
    result = refuse(args, inputs=[a, b, recipe], outputs=[tmp_path / "out"], contains="5000 digits")
    assert len(result.line) < 2 * QUOTE_LIMIT + 200, result  # the 5,000-digit value is cut to its ends
    if where == "key":
        assert "r.yaml:3" in result.line


@pytest.mark.parametrize("size", ["1" + "0" * 400, "1" + "0" * 400 + "GB", "1" + "0" * 400 + ".5MB", "9999999999TB"])
@pytest.mark.parametrize("door", ["merge", "recipe"])
def test_a_shard_size_beyond_any_file_is_one_line(models, tmp_path, size, door):
    a, b = models
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"models: [{a}, {b}]\noutput: {tmp_path / 'out'}\nmax_shard_size: '{size}'\n")
    args = (["merge", "--models", a, b, "--max-shard-size", size, "-o", tmp_path / "out"] if door == "merge"
            else ["run", recipe])
    result = refuse(args, inputs=[a, b, recipe], outputs=[tmp_path / "out"], contains="shard size")
    assert len(result.line) < 2 * QUOTE_LIMIT + 200, result  # the 5,000-digit value is cut to its ends


@pytest.mark.parametrize("device", ["meta", "cuda:99" if shutil.which("nvidia-smi") else "cuda"])
def test_a_device_that_cannot_run_the_models_is_one_line(models, tmp_path, device):
    a, b = models
    examples = tmp_path / "few.jsonl"
    examples.write_text(jsonl(json.dumps(GOOD), json.dumps(GOOD)))
    for command in (["weights", "--models", a, b, "--examples", examples, "--device", device],
                    ["eval", "--models", a, "--data", examples, "--device", device]):
        refuse(command, inputs=[a, b, examples], outputs=[tmp_path / "out"], contains=device)
