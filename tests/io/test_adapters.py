"""A LoRA adapter folder is a model: its base with the adapter applied, equal to PEFT's own
``merge_and_unload()``, from the CLI, recipes and the API; unsupported adapters are refused by name."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import make_bert, make_decoder, make_gpt2, make_lora, read_folder_tensors, run_cli, snapshot

import cocktail
from cocktail.errors import InputError

peft = pytest.importorskip("peft")
LoraConfig = peft.LoraConfig


def assert_same_tensors(out: dict, expected: dict, atol: float = 1e-6) -> None:
    assert out, "no tensors written"
    for name, tensor in out.items():
        assert name in expected, name
        assert tensor.shape == expected[name].shape, name
        assert torch.allclose(tensor.float(), expected[name].float(), atol=atol, rtol=0), name


CASES = {
    # BertModel: linear layers and the word embeddings (lora_embedding_A/B), trained biases, per-module r and alpha
    "bert": (lambda d: make_bert(d, seed=1), "BertModel", dict(
        r=4, lora_alpha=8, target_modules=["query", "value", "word_embeddings"], bias="lora_only",
        rank_pattern={"value": 2}, alpha_pattern={"query": 3})),
    # rank_pattern / alpha_pattern keys that are regular expressions, matched as PEFT matches them
    "bert-regex-patterns": (lambda d: make_bert(d, seed=6), "BertModel", dict(
        r=4, lora_alpha=8, target_modules=["query", "key", "value"],
        rank_pattern={r"layer\.1\..*value": 2, r"(query|key)": 3}, alpha_pattern={r"\d\.attention\.self\.key": 5})),
    # a reranker with its classifier saved whole (modules_to_save) and rsLoRA scaling
    "bert-classifier": (lambda d: make_bert(d, seed=2, model_class="BertForSequenceClassification"),
                        "BertForSequenceClassification", dict(
                            r=4, lora_alpha=16, use_rslora=True, target_modules=["query", "key", "dense"],
                            modules_to_save=["classifier"])),
    "llama": (lambda d: make_decoder(d, seed=3), "LlamaForCausalLM", dict(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"])),
    # Qwen2 has q/k/v biases (lora_bias adds to them) and here tied input/output embeddings
    "qwen2": (lambda d: make_decoder(d, seed=4, model_type="qwen2", tie_word_embeddings=True), "Qwen2ForCausalLM",
              dict(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"], lora_bias=True)),
    # GPT-2's Conv1D layers store (in, out): fan_in_fan_out transposes the update
    "gpt2": (lambda d: make_gpt2(d, seed=5), "GPT2LMHeadModel", dict(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True, lora_bias=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_adapter_merges_to_exactly_what_peft_merge_and_unload_gives(tmp_path, case):
    make_base, model_class, options = CASES[case]
    base = make_base(tmp_path / "base")
    expected = make_lora(base, tmp_path / "lora", LoraConfig(**options), model_class, seed=7)
    before = snapshot(tmp_path / "lora")
    cocktail.merge([str(tmp_path / "lora")], [1.0], tmp_path / "out")  # the type its base's config says
    out = read_folder_tensors(tmp_path / "out")
    assert set(out) == set(read_folder_tensors(base))  # the base's tensors, under its names
    assert_same_tensors(out, expected)
    assert any(not torch.equal(out[n], t) for n, t in read_folder_tensors(base).items())  # the adapter did something
    assert snapshot(tmp_path / "lora") == before
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == \
        json.loads((base / "config.json").read_text())["model_type"]


def test_the_merged_decoder_loads_in_transformers_and_computes_what_peft_computes(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = make_decoder(tmp_path / "base", seed=3)
    make_lora(base, tmp_path / "lora", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
              "LlamaForCausalLM", seed=1)
    cocktail.merge([str(tmp_path / "lora")], [1.0], tmp_path / "out", model_type="decoder")
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "lora").eval()
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, theirs(ids).logits, atol=1e-5)


def test_bin_adapters_are_read_like_safetensors_ones(tmp_path):
    base = make_bert(tmp_path / "base", seed=1)
    expected = make_lora(base, tmp_path / "lora", LoraConfig(r=2, lora_alpha=4, target_modules=["query"]),
                         "BertModel", fmt="bin")
    assert (tmp_path / "lora" / "adapter_model.bin").is_file()
    cocktail.merge([str(tmp_path / "lora")], [1.0], tmp_path / "out")
    assert_same_tensors(read_folder_tensors(tmp_path / "out"), expected)


@pytest.fixture
def llama_and_lora(tmp_path):
    base = make_decoder(tmp_path / "base", seed=3)
    expected = make_lora(base, tmp_path / "lora", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"]),
                         "LlamaForCausalLM", seed=2)
    return base, tmp_path / "lora", expected


def test_cli_mixes_the_fine_tune_with_its_base(llama_and_lora, tmp_path):
    base, lora, expected = llama_and_lora
    before = snapshot(base), snapshot(lora)
    result = run_cli("merge", "--models", lora, base, "--weights", "0.5", "0.5", "--model-type", "decoder",
                     "--output", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result
    base_tensors = read_folder_tensors(base)
    assert_same_tensors(read_folder_tensors(tmp_path / "out"),
                        {n: 0.5 * expected[n] + 0.5 * t for n, t in base_tensors.items()})
    assert (snapshot(base), snapshot(lora)) == before
    recipe = yaml.safe_load((tmp_path / "out" / "cocktail_recipe.yaml").read_text())
    assert recipe["models"][0]["base"] == str(base)  # the base it was applied to, recorded
    assert [i["sha256"] for i in recipe["provenance"]["inputs"]][0].keys() == {"adapter_model.safetensors",
                                                                                "base/model.safetensors"}


def test_two_adapters_of_one_base_merge_with_any_method(tmp_path):
    base = make_bert(tmp_path / "base", seed=1)
    config = dict(r=4, lora_alpha=8, target_modules=["query", "value", "dense"])
    first = make_lora(base, tmp_path / "lora1", LoraConfig(**config), "BertModel", seed=1)
    second = make_lora(base, tmp_path / "lora2", LoraConfig(**config), "BertModel", seed=2)
    cocktail.merge([str(tmp_path / "lora1"), str(tmp_path / "lora2")], [0.6, 0.4], tmp_path / "out",
                   method="ties", base=str(base), parameters={"density": 0.5})
    # the same method on PEFT's merges, as state dicts
    base_sd = read_folder_tensors(base)
    names = list(base_sd)
    reference = cocktail.merge_state_dicts([{n: first[n] for n in names}, {n: second[n] for n in names}],
                                           [0.6, 0.4], method="ties", base=base_sd, density=0.5)
    assert_same_tensors(read_folder_tensors(tmp_path / "out"), reference)


def test_the_base_is_given_when_the_adapter_config_names_none_that_is_here(llama_and_lora, tmp_path):
    base, lora, expected = llama_and_lora
    config = json.loads((lora / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-org/not-in-the-cache"
    (lora / "adapter_config.json").write_text(json.dumps(config))

    refused = run_cli("merge", "--models", lora, "--model-type", "decoder", "--output", tmp_path / "x", "--quiet")
    assert refused.returncode == 2, refused
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: ")
    assert "some-org/not-in-the-cache" in refused.stderr and "--adapter-base" in refused.stderr
    assert not (tmp_path / "x").exists()

    recipe = tmp_path / "r.yaml"  # a recipe key per model, relative to the recipe file
    recipe.write_text("model_type: decoder\nmodels:\n  - path: lora\n    base: base\n    weight: 1.0\noutput: out\n")
    result = run_cli("run", recipe, "--quiet")
    assert result.returncode == 0, result
    assert_same_tensors(read_folder_tensors(tmp_path / "out"), expected)

    cli = run_cli("merge", "--models", lora, base, "--adapter-base", base, "--weights", "1", "0",
                  "--model-type", "decoder", "--output", tmp_path / "cli", "--quiet")
    assert cli.returncode == 0, cli
    assert_same_tensors(read_folder_tensors(tmp_path / "cli"), expected)

    api = cocktail.merge([str(lora), str(base)], [1.0, 0.0], tmp_path / "api", model_type="decoder",
                         adapter_base=str(base))
    assert api.recipe.models[0].base == str(base) and api.recipe.models[1].base is None
    assert_same_tensors(read_folder_tensors(tmp_path / "api"), expected)

    # the written recipe reruns (with --verify) to the same bytes, and --verify sees a changed adapter
    again = run_cli("run", tmp_path / "out" / "cocktail_recipe.yaml", "--output", tmp_path / "again", "--verify",
                    "--quiet")
    assert again.returncode == 0, again
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "out" / "model.safetensors").read_bytes()
    data = bytearray((lora / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 1
    (lora / "adapter_model.safetensors").write_bytes(bytes(data))
    changed = run_cli("run", tmp_path / "out" / "cocktail_recipe.yaml", "--output", tmp_path / "third", "--verify")
    assert changed.returncode == 2 and "adapter_model.safetensors" in changed.stderr, changed


def test_an_adapter_base_for_no_adapter_is_refused(tmp_path):
    a, b = make_bert(tmp_path / "a", seed=1), make_bert(tmp_path / "b", seed=2)
    result = run_cli("merge", "--models", a, b, "--adapter-base", a, "--output", tmp_path / "out")
    assert result.returncode == 2 and "no model is a LoRA adapter folder" in result.stderr, result
    with pytest.raises(InputError, match="not a LoRA adapter folder"):
        cocktail.run(cocktail.Recipe.from_yaml_text(f"models:\n  - path: {a}\n    base: {b}\n"
                                                    f"  - {b}\noutput: {tmp_path / 'o'}\n"))


def test_inspect_shows_an_adapter_as_such(llama_and_lora):
    base, lora, _ = llama_and_lora
    result = run_cli("inspect", lora, base, "--json")
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    adapter = report["models"][0]["adapter"]
    assert adapter["base"] == str(base) and adapter["base_from"] == "adapter_config.json"
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8
    assert adapter["target_modules"] == ["q_proj", "up_proj"] and adapter["lora_modules"] == 4  # 2 layers x 2
    assert report["models"][1]["adapter"] is None and report["mergeable"] is True
    given = json.loads(run_cli("inspect", lora, "--adapter-base", base, "--json").stdout)["models"][0]["adapter"]
    assert given["base_from"] == "given" and given["base"] == str(base)
    text = run_cli("inspect", lora).stdout
    assert "LoRA r=4, lora_alpha 8" in text and "q_proj, up_proj: 4 modules" in text and str(base) in text


@pytest.mark.parametrize("kind", ["dora", "loha", "ia3"])
def test_adapters_cocktail_does_not_apply_are_refused_by_name(tmp_path, kind):
    base = make_bert(tmp_path / "base", seed=1)
    config = {"dora": lambda: LoraConfig(r=2, target_modules=["query"], use_dora=True),
              "loha": lambda: peft.LoHaConfig(r=2, target_modules=["query"]),
              "ia3": lambda: peft.IA3Config(target_modules=["query", "output.dense"],
                                            feedforward_modules=["output.dense"])}[kind]()
    make_lora(base, tmp_path / "adapter", config, "BertModel")
    result = run_cli("merge", "--models", tmp_path / "adapter", base, "--output", tmp_path / "out")
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and {"dora": "DoRA", "loha": "LoHa", "ia3": "IA3"}[kind] in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_adapter_for_another_model_is_refused_naming_its_tensors(tmp_path):
    bert = make_bert(tmp_path / "bert", seed=1)
    make_lora(bert, tmp_path / "lora", LoraConfig(r=2, lora_alpha=4, target_modules=["query"]), "BertModel")
    llama = make_decoder(tmp_path / "llama")
    with pytest.raises(InputError, match=r"attention\.self\.query changes .* which the base model does not have"):
        cocktail.merge([str(tmp_path / "lora")], [1.0], tmp_path / "out", adapter_base=str(llama))
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    config["r"] = 3  # a config that lies about its factors
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="rank 2 and 2, but its config says r=3"):
        cocktail.merge([str(tmp_path / "lora")], [1.0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_output_may_not_go_inside_an_adapter_folder(llama_and_lora):
    base, lora, _ = llama_and_lora
    with pytest.raises(cocktail.CocktailError):
        cocktail.merge([str(lora)], [1.0], lora / "merged", model_type="decoder")
    assert not (lora / "merged").exists()


def test_weights_eval_and_sweep_take_an_adapter_as_its_merge(tmp_path):
    from conftest import save_bert_tokenizer
    from transformers import BertModel

    base = make_bert(tmp_path / "base", seed=1)
    expected = make_lora(base, tmp_path / "lora", LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]),
                         "BertModel", seed=3)
    merged = BertModel.from_pretrained(str(base))  # a folder holding PEFT's merge, saved by transformers
    merged.load_state_dict(expected)
    merged.save_pretrained(str(tmp_path / "peft-merged"))
    save_bert_tokenizer(tmp_path / "peft-merged")
    examples = [{"query": "the cat", "pos": ["cat dog"], "neg": ["sun moon", "red car"]},
                {"query": "a red car", "pos": ["car red blue"], "neg": ["the sea"]}]
    sts = tmp_path / "sts.tsv"
    sts.write_text("the cat\ta cat\t4\nthe dog\tsun moon\t1\nred car\tblue car\t3\nthe sea\tthe sky\t2\n")

    losses = cocktail.few_shot_losses([str(tmp_path / "lora"), str(tmp_path / "peft-merged")], examples).losses
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    result = run_cli("weights", "--models", tmp_path / "lora", base, "--examples",
                     _write(tmp_path / "few.jsonl", examples), "--json", "--quiet")
    assert result.returncode == 0 and json.loads(result.stdout)["losses"][0] == pytest.approx(losses[0], abs=1e-5)

    peft_rows = cocktail.evaluate_models([str(tmp_path / "peft-merged")], [str(sts)])
    ours = cocktail.evaluate_models([str(tmp_path / "lora")], [str(sts)], adapter_base=str(base))
    assert ours[0]["value"] == pytest.approx(peft_rows[0]["value"])
    sweep = cocktail.sweep_weights([str(tmp_path / "lora"), str(base)], [str(sts)], steps=2)
    at_one = next(r for r in sweep.rows if r["weight"] == 1.0)
    assert at_one["value"] == pytest.approx(peft_rows[0]["value"])


def _write(path, examples):
    path.write_text("\n".join(json.dumps(e) for e in examples) + "\n")
    return path


@pytest.mark.parametrize("change", [{"rank_pattern": ["query"]}, {"alpha_pattern": {"(query": 4}},
                                    {"r": "eight"}, {"use_rslora": "yes"}, {"base_model_name_or_path": None}])
def test_a_broken_adapter_config_is_one_line_naming_it(tmp_path, change):
    base = make_bert(tmp_path / "base", seed=1)
    make_lora(base, tmp_path / "lora", LoraConfig(r=2, lora_alpha=4, target_modules=["query"]), "BertModel")
    path = tmp_path / "lora" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    result = run_cli("merge", "--models", tmp_path / "lora", "--output", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result
    assert result.stderr.startswith("error: ") and str(tmp_path / "lora") in result.stderr
    assert not (tmp_path / "out").exists()
