"""The statistics of data-aware merges (Gram matrices of linear-layer inputs, diagonal Fisher), against
plain computations of their definitions with transformers, and RegMean / Fisher merges end to end.

The references run ``AutoModel.from_pretrained`` on the examples' texts themselves and share no code
with ``cocktail/fewshot/statistics.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import (
    DECODER_VOCAB,
    make_bert,
    make_decoder,
    read_folder_tensors,
    run_cli,
    save_decoder_tokenizer,
    snapshot,
)

from cocktail.fewshot import statistics
from cocktail.fewshot.examples import load_examples
from cocktail.fewshot.statistics import statistics_for_plan
from cocktail.io.adapters import open_path
from cocktail.merging.plan import build_plan
from cocktail.recipe.weights_from import FewShotOptions

WIDE = dict(initializer_range=0.5)
EXAMPLES = [  # texts of different lengths (padding in every batch), none repeated
    {"query": "the cat", "pos": ["a red cat is big and fast"], "neg": ["a dog", "the sea is blue"]},
    {"query": "protein cell gene", "pos": ["gene brain cell"], "neg": ["water air fire earth sun moon"]},
]
TARGET = [
    {"query": "green tree", "pos": ["tree is green"], "neg": ["red fire"]},
    {"query": "science paper claim", "pos": ["a study result"], "neg": ["the moon", "one two three"]},
]


def texts_of(examples):
    return [t for e in examples for t in [e["query"], e["pos"][0], *e["neg"]]]


def cocktail_statistics(path, examples, kind, batch_size=2, model_type="encoder"):
    """Every parameter's statistics as cocktail computes them for one model: ``{canonical: tensor}``."""
    with open_path(str(path)) as checkpoint:
        plan = build_plan([checkpoint])
        options = FewShotOptions(examples=examples, batch_size=batch_size)
        found = statistics_for_plan(plan, model_type, kind, options, ["target"],
                                    {"target": load_examples(examples, model_type)})
        try:
            return {t.canonical: found.for_tensor(t)[0][0] for t in plan.tensors if found.for_tensor(t) is not None}
        finally:
            found.close()


def test_gram_matrices_are_the_mean_over_unpadded_tokens_of_each_layers_inputs(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    path = make_bert(tmp_path / "m", seed=1, **WIDE)
    grams = cocktail_statistics(path, EXAMPLES, "gram")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    tokens = tokenizer(texts_of(EXAMPLES), padding=True, return_tensors="pt")
    assert (tokens["attention_mask"] == 0).any()  # some padding, which must not count
    with torch.no_grad():
        states = model(**tokens, output_hidden_states=True).hidden_states
    mask = tokens["attention_mask"].bool()
    for layer in (0, 1):
        rows = states[layer][mask].double()  # the input of layer `layer`'s query, key and value
        expected = rows.T @ rows / rows.shape[0]
        for part in ("query", "key", "value"):
            got = grams[f"encoder.layer.{layer}.attention.self.{part}.weight"].double()
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert "embeddings.word_embeddings.weight" not in grams  # not a linear layer: merged linearly
    assert grams["encoder.layer.0.output.dense.weight"].shape == (64, 64)  # the FFN's inner width


def reference_fisher(model, example_losses, names):
    """The definition: the mean over examples of each squared per-example gradient, by plain autograd."""
    params = dict(model.named_parameters())
    expected = {name: torch.zeros_like(params[name]) for name in names}
    losses = list(example_losses())
    for loss in losses:
        grads = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=True)
        for name, grad in zip(names, grads):
            expected[name] += grad ** 2 / len(losses)
    return expected


def encoder_example_losses(model, tokenizer):
    """Both examples in one group (batch size 2): each query against every passage of the group."""
    texts = [e["query"] for e in EXAMPLES] + [t for e in EXAMPLES for t in [e["pos"][0], *e["neg"]]]
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    emb = torch.nn.functional.normalize(model(**tokens).last_hidden_state[:, 0], dim=-1)
    queries, passages = emb[:len(EXAMPLES)], emb[len(EXAMPLES):]
    targets = torch.tensor([0, 1 + len(EXAMPLES[0]["neg"])])  # each query's own positive among the passages
    return torch.nn.functional.cross_entropy(queries @ passages.T / 0.05, targets, reduction="none")


def reranker_example_losses(model, tokenizer):
    for e in EXAMPLES:
        passages = [e["pos"][0], *e["neg"]]
        tokens = tokenizer([e["query"]] * len(passages), passages, padding=True, return_tensors="pt")
        yield -torch.log_softmax(model(**tokens).logits[:, 0], dim=0)[0]


def decoder_example_losses(model, tokenizer):
    for e in DECODER_EXAMPLES:  # LM-Cocktail's tokenisation, HF's own loss over the output tokens
        ids = tokenizer.encode(e["input"] + " " + e["output"]) + [tokenizer.eos_token_id]
        prompt = len(tokenizer.encode(e["input"]))
        labels = torch.tensor([[-100] * prompt + ids[prompt:]])
        yield model(input_ids=torch.tensor([ids]), labels=labels).loss


DECODER_EXAMPLES = [{"input": "the cat sat on", "output": "the mat"}, {"input": "a dog runs", "output": "in the park"},
                    {"input": "one", "output": "two three four five"}]
def save_gpt2(folder):
    """A tiny GPT-2: its lm_head is its embedding table (an embedding's gradient plus a linear layer's)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(5)
    config = GPT2Config(vocab_size=DECODER_VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=1,
                        eos_token_id=2, pad_token_id=0, initializer_range=0.2)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    save_decoder_tokenizer(folder)
    return folder


FISHER_CASES = {  # model type: (make the model, examples, load it, its example losses, parameters checked, the
    # prefix their names have in the loaded model and not in the checkpoint's canonical names)
    "encoder": (lambda f: make_bert(f, seed=2, **WIDE), EXAMPLES, "AutoModel", encoder_example_losses,
                ["encoder.layer.0.attention.self.query.weight", "encoder.layer.1.output.dense.bias",
                 "embeddings.word_embeddings.weight"], None),
    "reranker": (lambda f: make_bert(f, seed=3, model_class="BertForSequenceClassification", **WIDE), EXAMPLES,
                 "AutoModelForSequenceClassification", reranker_example_losses,
                 ["bert.encoder.layer.1.attention.output.dense.weight", "bert.embeddings.word_embeddings.weight",
                  "classifier.weight"], "bert."),
    "decoder": (lambda f: make_decoder(f, seed=4), DECODER_EXAMPLES, "AutoModelForCausalLM",
                decoder_example_losses, ["model.layers.0.mlp.gate_proj.weight", "model.embed_tokens.weight",
                                         "lm_head.weight"], "model."),
    "decoder-tied": (save_gpt2, DECODER_EXAMPLES, "AutoModelForCausalLM", decoder_example_losses,  # embeddings: also
                     ["transformer.wte.weight", "transformer.h.1.attn.c_proj.weight"], "transformer."),  # lm_head
}



@pytest.mark.parametrize("graph", ["one graph", "chunk by chunk"])
@pytest.mark.parametrize("case", list(FISHER_CASES))
def test_diagonal_fisher_is_the_mean_squared_per_example_gradient_of_the_models_own_loss(tmp_path, monkeypatch,
                                                                                         case, graph):
    """Whether an example's texts are differentiated through one graph or chunk by chunk (each text
    its own chunk when the graph budget is one byte), its gradient is its loss term's."""
    import transformers

    make, examples, loader, example_losses, names, prefix = FISHER_CASES[case]
    model_type = case.split("-")[0]
    path = make(tmp_path / "m")
    if graph == "chunk by chunk":
        monkeypatch.setattr(statistics, "GRAPH_BUDGET", 1)
    fishers = cocktail_statistics(path, examples, "fisher", batch_size=2, model_type=model_type)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    model = getattr(transformers, loader).from_pretrained(str(path)).eval()
    expected = reference_fisher(model, lambda: example_losses(model, tokenizer), names)
    for name in names:  # float32, batched differently: each within 1e-5 of its tensor's largest entry
        scale = float(expected[name].abs().max())
        got = fishers[name.removeprefix(prefix) if prefix else name]
        assert scale > 0
        assert torch.allclose(got, expected[name], rtol=1e-3, atol=1e-5 * scale), name


@pytest.fixture
def ft_and_base(tmp_path):
    make_bert(tmp_path / "ft", seed=1, **WIDE)
    make_bert(tmp_path / "base", seed=2, **WIDE)
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(e) for e in TARGET) + "\n")
    (tmp_path / "k.jsonl").write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n")
    return tmp_path


def merge_cli(folder, *args):
    return run_cli("merge", "--models", "./ft", "./base", "--base", "./base", "--examples", "t.jsonl",
                   "--keep", "k.jsonl", "-q", *args, cwd=folder)


@pytest.mark.parametrize("method", ["regmean", "fisher"])
def test_merge_with_weight_one_on_the_fine_tune_gives_the_fine_tune(ft_and_base, method):
    result = merge_cli(ft_and_base, "--method", method, "--weights", "1", "0", "--output", "out")
    assert result.returncode == 0, result
    merged, ft = read_folder_tensors(ft_and_base / "out"), read_folder_tensors(ft_and_base / "ft")
    for name, tensor in ft.items():
        assert torch.allclose(merged[name], tensor, rtol=1e-4, atol=1e-5), name


def test_regmean_merge_fits_each_layer_to_each_models_own_examples(ft_and_base, cli):
    """The fine-tune's statistics come from the target examples, the base's from the keep examples: the
    merged query weight is the solve over exactly those Gram matrices (alpha as given)."""
    before = snapshot(ft_and_base / "ft")
    result = merge_cli(ft_and_base, "--method", "regmean", "--param", "alpha=0.5", "--output", "out")
    assert result.returncode == 0, result
    assert snapshot(ft_and_base / "ft") == before
    g_ft = cocktail_statistics(ft_and_base / "ft", TARGET, "gram")
    g_base = cocktail_statistics(ft_and_base / "base", EXAMPLES, "gram")
    name = "encoder.layer.1.attention.self.query.weight"
    ft, base = read_folder_tensors(ft_and_base / "ft"), read_folder_tensors(ft_and_base / "base")

    def reduced(g):
        g = g.double()
        return 0.5 * g + 0.5 * torch.diag(torch.diag(g))

    a, b = reduced(g_ft[name]), reduced(g_base[name])
    expected = torch.linalg.solve(a + b, a @ ft[name].double().T + b @ base[name].double().T).T
    merged = read_folder_tensors(ft_and_base / "out")
    assert torch.allclose(merged[name].double(), expected, rtol=1e-4, atol=1e-5)
    bias = "encoder.layer.1.attention.self.query.bias"  # not a linear layer's weight: the linear average
    assert torch.allclose(merged[bias], 0.5 * ft[bias] + 0.5 * base[bias], atol=1e-6)
    assert not torch.allclose(merged[name], 0.5 * ft[name] + 0.5 * base[name], atol=1e-3)
    recipe = yaml.safe_load((ft_and_base / "out" / "cocktail_recipe.yaml").read_text())
    assert recipe["merge_method"] == "regmean" and recipe["weights_from"]["keep"].endswith("k.jsonl")
    assert [m["examples"] for m in recipe["provenance"]["statistics"]["models"]] == ["target", "keep"]
    again = cli("run", ft_and_base / "out" / "cocktail_recipe.yaml", "--output", ft_and_base / "again", "-q")
    assert again.returncode == 0, again
    assert snapshot(ft_and_base / "again")["model.safetensors"] == snapshot(ft_and_base / "out")["model.safetensors"]


def test_statistics_are_cached_and_a_new_weight_solves_again_without_running_a_model(ft_and_base, hash_cache):
    assert merge_cli(ft_and_base, "--method", "regmean", "--output", "a").returncode == 0
    files = sorted((hash_cache / "statistics").glob("gram-*.safetensors"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    result = merge_cli(ft_and_base, "--method", "regmean", "--weights", "0.7", "0.3", "--output", "b")
    assert result.returncode == 0, result
    assert sorted((hash_cache / "statistics").glob("gram-*.safetensors")) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert "cached" not in result.stderr or True  # progress is off (-q): nothing to say
    a, b = read_folder_tensors(ft_and_base / "a"), read_folder_tensors(ft_and_base / "b")
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(a[name], b[name])


@pytest.mark.parametrize("args, message", [
    (["--models", "./ft", "./base", "--method", "regmean", "--output", "o"], "give --examples"),
    (["--models", "./ft", "./base", "--method", "regmean", "--examples", "t.jsonl", "--keep", "k.jsonl",
      "--output", "o"], "--keep feeds the base model's statistics"),
    (["--models", "./ft", "./base", "--method", "fisher", "--examples", "t.jsonl", "--weights", "1.5", "-0.5",
      "--output", "o"], "non-negative weights"),
    (["--models", "./ft", "./base", "--method", "regmean", "--examples", "t.jsonl", "--param", "alpha=2",
      "--output", "o"], "alpha must be in [0, 1]"),
])
def test_bad_inputs_get_one_clear_error(ft_and_base, args, message):
    result = run_cli("merge", *args, cwd=ft_and_base)
    assert result.returncode == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (ft_and_base / "o").exists()


def test_recipe_with_examples_per_model_is_the_same_merge_as_examples_and_keep(ft_and_base, cli):
    """models[i].examples names each model's own examples: the fine-tune on the target ones and the base
    on the keep ones is exactly what --examples / --keep / --base assign."""
    assert merge_cli(ft_and_base, "--method", "regmean", "--output", "by-flags").returncode == 0
    (ft_and_base / "r.yaml").write_text(
        "merge_method: regmean\n"
        "models:\n  - path: ft\n    examples: t.jsonl\n  - path: base\n    examples: k.jsonl\n"
        "output: by-recipe\n")
    result = cli("run", ft_and_base / "r.yaml", "-q")
    assert result.returncode == 0, result
    assert (snapshot(ft_and_base / "by-recipe")["model.safetensors"]
            == snapshot(ft_and_base / "by-flags")["model.safetensors"])


def test_examples_per_model_are_refused_for_a_method_that_does_not_use_them(ft_and_base, cli):
    (ft_and_base / "r.yaml").write_text(
        "models:\n  - path: ft\n    examples: t.jsonl\n  - path: base\noutput: o\n")
    result = cli("run", ft_and_base / "r.yaml")
    assert result.returncode == 2, result
    assert "models[0].examples" in result.stderr and "data-aware" in result.stderr


def test_api_merge_of_folders_and_of_loaded_models_equals_the_cli(ft_and_base):
    from transformers import AutoModel

    import cocktail

    assert merge_cli(ft_and_base, "--method", "fisher", "--weights", "0.6", "0.4", "--output", "cli").returncode == 0
    expected = read_folder_tensors(ft_and_base / "cli")
    ft, base = ft_and_base / "ft", ft_and_base / "base"
    cocktail.merge([ft, base], [0.6, 0.4], ft_and_base / "api", method="fisher", base=base,
                   examples=ft_and_base / "t.jsonl", keep=ft_and_base / "k.jsonl")
    assert snapshot(ft_and_base / "api")["model.safetensors"] == snapshot(ft_and_base / "cli")["model.safetensors"]
    from transformers import AutoTokenizer

    loaded = [AutoModel.from_pretrained(str(p)) for p in (ft, base)]
    merged = cocktail.merge(loaded, [0.6, 0.4], method="fisher", base=loaded[1], tokenizer=AutoTokenizer.from_pretrained(
        str(ft)), examples=ft_and_base / "t.jsonl", keep=ft_and_base / "k.jsonl")
    for name, tensor in merged.state_dict().items():
        if name in expected:
            assert torch.allclose(tensor, expected[name], atol=1e-6), name


def test_merge_state_dicts_takes_the_statistics_in_memory():
    import numpy as np

    from cocktail import merge_state_dicts

    gen = torch.Generator().manual_seed(0)
    models = [{"dense.weight": torch.randn(3, 4, generator=gen), "dense.bias": torch.randn(3, generator=gen)}
              for _ in range(2)]
    inputs = [torch.randn(6, 4, generator=gen), torch.randn(5, 4, generator=gen)]
    merged = merge_state_dicts(models, [0.5, 0.5], method="regmean", alpha=1.0,
                               statistics=[{"dense.weight": x.T @ x} for x in inputs])
    stacked = np.vstack([x.numpy() for x in inputs])
    outputs = np.vstack([(x @ m["dense.weight"].T).numpy() for x, m in zip(inputs, models)])
    fit, *_ = np.linalg.lstsq(stacked, outputs, rcond=None)
    np.testing.assert_allclose(merged["dense.weight"].numpy(), fit.T, rtol=1e-4, atol=1e-5)
    assert torch.allclose(merged["dense.bias"], 0.5 * models[0]["dense.bias"] + 0.5 * models[1]["dense.bias"])


def test_merge_state_dicts_normalizes_each_models_fisher_by_its_norm_over_every_tensor():
    from cocktail import merge_state_dicts

    gen = torch.Generator().manual_seed(0)
    models = [{"dense.weight": torch.randn(3, 4, generator=gen), "dense.bias": torch.randn(3, generator=gen)}
              for _ in range(2)]
    fishers = [{name: torch.rand(t.shape, generator=gen) * scale for name, t in m.items()}
               for m, scale in zip(models, (50.0, 1.0))]
    merged = merge_state_dicts(models, [0.5, 0.5], method="fisher", normalize_fisher=True, statistics=fishers)
    norms = [sum(float(f.double().square().sum()) for f in fisher.values()) ** 0.5 for fisher in fishers]
    for name in models[0]:
        shares = [fisher[name].double() / n + 1e-12 for fisher, n in zip(fishers, norms)]
        expected = sum(s * m[name].double() for s, m in zip(shares, models)) / sum(shares)
        assert torch.allclose(merged[name].double(), expected, rtol=1e-5, atol=1e-6), name


def test_normalized_fisher_merge_from_the_command_line_uses_each_models_whole_fisher(ft_and_base):
    result = merge_cli(ft_and_base, "--method", "fisher", "--param", "normalize_fisher=true", "--output", "out")
    assert result.returncode == 0, result
    f_ft = cocktail_statistics(ft_and_base / "ft", TARGET, "fisher")
    f_base = cocktail_statistics(ft_and_base / "base", EXAMPLES, "fisher")
    norms = [sum(float(t.double().square().sum()) for t in f.values()) ** 0.5 for f in (f_ft, f_base)]
    ft, base = read_folder_tensors(ft_and_base / "ft"), read_folder_tensors(ft_and_base / "base")
    merged = read_folder_tensors(ft_and_base / "out")
    name = "encoder.layer.1.attention.self.query.weight"
    shares = [f[name].double() / n + 1e-12 for f, n in zip((f_ft, f_base), norms)]
    expected = (shares[0] * ft[name].double() + shares[1] * base[name].double()) / (shares[0] + shares[1])
    assert torch.allclose(merged[name].double(), expected, rtol=1e-4, atol=1e-6)
    recipe = yaml.safe_load((ft_and_base / "out" / "cocktail_recipe.yaml").read_text())
    assert recipe["parameters"]["normalize_fisher"] is True


def test_state_dicts_cannot_be_run_on_examples():
    import cocktail
    from cocktail.errors import InputError

    state = {"dense.weight": torch.zeros(2, 2)}
    with pytest.raises(InputError, match="not state dicts"):
        cocktail.merge([state, dict(state)], method="regmean", examples=[{"query": "a", "pos": ["b"]}])


def test_search_over_regmean_merges_finds_weights_whose_regmean_merge_has_the_reported_loss(ft_and_base, cli):
    """--search with --method regmean: every merge the search scores is a RegMean merge (the weights
    scaling the statistics); the written model is the RegMean merge at the weights found, and its loss
    on the examples is the loss the search reports."""
    result = merge_cli(ft_and_base, "--method", "regmean", "--search", "--search-budget", "4", "--json",
                       "--output", "out")
    assert result.returncode == 0, result
    summary = json.loads(result.stdout)
    search = summary["weights_from"]["search"]
    assert search["evaluations"] >= 1
    weights = summary["weights"]
    recipe = yaml.safe_load((ft_and_base / "out" / "cocktail_recipe.yaml").read_text())
    assert [m["weight"] for m in recipe["models"]] == weights
    assert "search" not in recipe["weights_from"] and recipe["weights_from"]["keep"].endswith("k.jsonl")
    scored = cli("weights", "--models", ft_and_base / "out", "--examples", ft_and_base / "t.jsonl", "--json", "-q")
    assert scored.returncode == 0, scored
    assert json.loads(scored.stdout)["losses"][0] == pytest.approx(search["loss"], abs=1e-5)
    again = cli("run", ft_and_base / "out" / "cocktail_recipe.yaml", "--output", ft_and_base / "again", "-q")
    assert again.returncode == 0, again
    assert snapshot(ft_and_base / "again")["model.safetensors"] == snapshot(ft_and_base / "out")["model.safetensors"]


def test_layers_that_need_a_ridge_are_named(ft_and_base):
    """At alpha 1 the FFN's output layer (64 inputs) sees fewer tokens of the two examples than it has
    inputs: the sum of its Gram matrices is singular, the merge adds a ridge there and says which layers;
    a weight of 1 on one model needs no solve, so no ridge, and gives that model back."""
    args = ["merge", "--models", "./ft", "./base", "--examples", "t.jsonl", "--method", "regmean", "--param", "alpha=1",
            "-q"]
    result = run_cli(*args, "--weights", "0.5", "0.5", "--output", "out", cwd=ft_and_base)
    assert result.returncode == 0, result
    assert "needed a small ridge" in result.stderr and "encoder.layer.0." in result.stderr
    merged = read_folder_tensors(ft_and_base / "out")
    assert all(torch.isfinite(t).all() for t in merged.values())
    result = run_cli(*args, "--weights", "1", "0", "--output", "one", cwd=ft_and_base)
    assert result.returncode == 0 and "ridge" not in result.stderr, result
    merged, ft = read_folder_tensors(ft_and_base / "one"), read_folder_tensors(ft_and_base / "ft")
    assert all(torch.equal(merged[name], tensor) for name, tensor in ft.items())
