"""Weights from a few examples: each loss against a plain computation of its definition, softmax
weights, repeatability, the search, the CLI and the merge with provenance.

The reference losses below are written from the definitions in the issue (LM-Cocktail's), with
transformers' ``from_pretrained``, one padded batch per loss group, and explicit matmul /
cross-entropy: they share no code with ``cocktail/losses.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, make_bert, make_gpt2, read_folder_tensors, run_cli, save_bert_tokenizer, snapshot

import cocktail
from cocktail.errors import InputError
from cocktail.fewshot.search import search_weights
from cocktail.fewshot.weighting import few_shot_losses
from cocktail.recipe.recipe import Recipe
from cocktail.runner import run

TOL = 1e-5
WIDE = dict(initializer_range=0.5)  # random tiny models that disagree clearly

EXAMPLES = [
    {"query": "the cat", "pos": ["a red cat", "cat"], "neg": ["a dog", "the sea", "blue sky", "fast car"]},
    {"query": "protein cell", "pos": ["gene brain cell"], "neg": ["water air"]},
    {"query": "fast car", "pos": ["slow car is big"], "neg": ["moon", "star", "tree"], "prompt": "search: "},
    {"query": "science paper", "pos": ["a study result"], "neg": []},
    {"query": "green tree", "pos": ["tree is green"], "neg": ["red fire", "the moon"]},
]


# -- independent reference computations -----------------------------------------------------------


def embed(model, tokenizer, texts, pooling):
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def reference_encoder_loss(path, examples, batch_size=2, pooling="cls", instruction="", tokenizer_path=None):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or path))
    model = AutoModel.from_pretrained(str(path)).eval()
    losses = []
    for start in range(0, len(examples), batch_size):
        group = examples[start:start + batch_size]
        queries = [e.get("prompt", instruction) + e["query"] for e in group]
        passages, targets = [], []
        for e in group:
            targets.append(len(passages))
            passages += [e["pos"][0]] + e["neg"]
        q = embed(model, tokenizer, queries, pooling)
        p = embed(model, tokenizer, passages, pooling)
        scores = q @ p.T / 0.05
        losses.append(torch.nn.functional.cross_entropy(scores, torch.tensor(targets)).item())
    return sum(losses) / len(losses)


def reference_reranker_loss(path, examples, batch_size=2):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    group_losses = []
    for start in range(0, len(examples), batch_size):
        per_query = []
        for e in examples[start:start + batch_size]:
            passages = [e["pos"][0]] + e["neg"]
            tokens = tokenizer([e["query"]] * len(passages), passages, padding=True, truncation=True,
                               max_length=512, return_tensors="pt")
            with torch.no_grad():
                scores = model(**tokens).logits[:, 0]
            per_query.append(-torch.log_softmax(scores, 0)[0].item())
        group_losses.append(sum(per_query) / len(per_query))
    return sum(group_losses) / len(group_losses)


def reference_decoder_loss(path, examples, batch_size=2):
    """LM-Cocktail's tokenisation and HF's own loss, each batch padded to its longest sequence."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    losses = []
    for start in range(0, len(examples), batch_size):
        ids, labels = [], []
        for e in examples[start:start + batch_size]:
            full = tokenizer.encode(e["input"] + " " + e["output"]) + [tokenizer.eos_token_id]
            prompt = tokenizer.encode(e["input"])
            ids.append(full)
            labels.append([-100] * len(prompt) + full[len(prompt):])
        width = max(map(len, ids))
        batch = torch.tensor([x + [0] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        target = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
        with torch.no_grad():
            losses.append(model(input_ids=batch, attention_mask=mask, labels=target).loss.item())
    return sum(losses) / len(losses)


def softmax(losses, temperature):
    exps = [math.exp(-x / temperature) for x in losses]
    return [e / sum(exps) for e in exps]


def save_word_tokenizer(folder: Path, words: list[str]) -> None:
    """A tiny word-level tokenizer with an EOS token and no pad token (like GPT-2's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>").save_pretrained(str(folder))


# -- losses match their definitions -------------------------------------------------------------


def test_encoder_losses_match_the_definition_and_weights_are_their_softmax(tmp_path):
    a = make_bert(tmp_path / "a", seed=1, **WIDE)
    b = make_bert(tmp_path / "b", seed=2, **WIDE)
    c = make_bert(tmp_path / "c", seed=3, **WIDE)
    result = few_shot_losses([a, b, c], EXAMPLES, temperature=0.5, query_instruction="find: ")
    expected = [reference_encoder_loss(m, EXAMPLES, instruction="find: ") for m in (a, b, c)]
    assert result.losses == pytest.approx(expected, abs=TOL)
    assert result.weights == pytest.approx(softmax(result.losses, 0.5), abs=1e-12)
    assert math.fsum(result.weights) == pytest.approx(1.0, abs=1e-12)
    assert max(result.weights) - min(result.weights) > 0.05  # the models really are told apart
    assert cocktail.weights_from_examples([a, b, c], EXAMPLES, temperature=0.5, query_instruction="find: ") \
        == result.weights


def test_same_numbers_as_lm_cocktail_where_they_overlap(tmp_path):
    """Every query has exactly neg_number negatives (LM-Cocktail needs that): its formula, with the
    target ``arange(B) * (passages // B)`` and plain padded batches, gives our loss and weights."""
    from transformers import AutoModel, AutoTokenizer

    examples = [json.loads(line) for line in (REPO / "examples" / "few-shot.jsonl").read_text().splitlines()]
    models = [make_bert(tmp_path / f"m{i}", seed=i, **WIDE) for i in range(2)]
    lm_losses = []
    for path in models:
        tokenizer, model = AutoTokenizer.from_pretrained(str(path)), AutoModel.from_pretrained(str(path)).eval()
        total = []
        for start in range(0, len(examples), 2):
            group = examples[start:start + 2]
            passages = [p for e in group for p in [e["pos"][0], *e["neg"]]]
            with torch.no_grad():
                q = model(**tokenizer([e["query"] for e in group], padding=True, return_tensors="pt")).last_hidden_state[:, 0]
                p = model(**tokenizer(passages, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
            scores = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(p, dim=-1).T / 0.05
            target = torch.arange(len(group)) * (len(passages) // len(group))
            total.append(torch.nn.functional.cross_entropy(scores, target).item())
        lm_losses.append(sum(total) / len(total))
    lm_weights = torch.softmax(-torch.tensor(lm_losses) / 5.0, -1).tolist()
    result = few_shot_losses(models, examples)
    assert result.losses == pytest.approx(lm_losses, abs=TOL)
    assert result.weights == pytest.approx(lm_weights, abs=1e-6)


def test_batch_size_is_part_of_the_loss(tmp_path):
    a = make_bert(tmp_path / "a", seed=1, **WIDE)
    for batch_size in (1, 3):
        (loss,) = few_shot_losses([a], EXAMPLES, batch_size=batch_size).losses
        assert loss == pytest.approx(reference_encoder_loss(a, EXAMPLES, batch_size=batch_size), abs=TOL)


def test_real_minilm_and_a_perturbed_copy_use_its_mean_pooling(tmp_path, minilm_path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(minilm_path))
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    perturbed = tmp_path / "perturbed"
    model.save_pretrained(str(perturbed))
    AutoTokenizer.from_pretrained(str(minilm_path)).save_pretrained(str(perturbed))
    examples = [json.loads(line) for line in (REPO / "examples" / "few-shot.jsonl").read_text().splitlines()][:4]

    result = few_shot_losses([minilm_path, perturbed], examples)
    assert "mean" in result.pooling  # from MiniLM's 1_Pooling/config.json, not BGE's [CLS]
    expected = [reference_encoder_loss(m, examples, pooling="mean") for m in (minilm_path, perturbed)]
    assert result.losses == pytest.approx(expected, abs=TOL)
    assert result.losses[0] < result.losses[1]  # noise hurts the real model
    assert result.weights == pytest.approx(softmax(result.losses, 5.0), abs=1e-12)


def test_reranker_losses_match_the_definition(tmp_path):
    a = make_bert(tmp_path / "a", seed=1, model_class="BertForSequenceClassification", **WIDE)
    b = make_bert(tmp_path / "b", seed=2, model_class="BertForSequenceClassification", **WIDE)
    examples = [e for e in EXAMPLES if e["neg"]]
    examples = [{k: v for k, v in e.items() if k != "prompt"} for e in examples]
    result = few_shot_losses([a, b], examples, model_type="reranker")
    assert result.losses == pytest.approx([reference_reranker_loss(m, examples) for m in (a, b)], abs=TOL)
    assert result.weights == pytest.approx(softmax(result.losses, 5.0), abs=1e-12)


def test_decoder_losses_match_the_definition_with_eos_as_pad(tmp_path):
    words = "what is the colour of sky sea grass blue green red two plus four equals".split()
    models = []
    for seed in (1, 2):
        folder = make_gpt2(tmp_path / f"g{seed}", seed=seed)
        save_word_tokenizer(folder, words)
        models.append(folder)
    examples = [{"input": "what is the colour of sky", "output": "blue"},
                {"input": "two plus two", "output": "equals four four"},
                {"input": "what is the colour of grass", "output": "green"}]
    result = few_shot_losses(models, examples, model_type="decoder")
    assert result.losses == pytest.approx([reference_decoder_loss(m, examples) for m in models], abs=TOL)
    assert result.weights == pytest.approx(softmax(result.losses, 5.0), abs=1e-12)


def test_encoder_saved_with_a_prefix_is_matched(tmp_path):
    """A BertForSequenceClassification checkpoint (``bert.`` names) scored as an embedder."""
    from transformers import AutoModel

    a = make_bert(tmp_path / "a", seed=1, **WIDE)
    b = make_bert(tmp_path / "b", seed=2, model_class="BertForSequenceClassification", **WIDE)
    as_encoder = tmp_path / "b_encoder"
    AutoModel.from_pretrained(str(b)).save_pretrained(str(as_encoder))
    save_bert_tokenizer(as_encoder)
    result = few_shot_losses([a, b], EXAMPLES)
    assert result.losses[1] == pytest.approx(reference_encoder_loss(as_encoder, EXAMPLES), abs=TOL)


# -- sampling and repeatability -------------------------------------------------------------------


def test_runs_repeat_exactly_and_the_seed_chooses_the_negatives(tmp_path):
    a = make_bert(tmp_path / "a", seed=1, **WIDE)
    examples = [dict(e, neg=e["neg"] + ["one two", "three four", "five six", "seven eight"]) for e in EXAMPLES]
    first = few_shot_losses([a], examples, neg_number=2, seed=7)
    again = few_shot_losses([a], examples, neg_number=2, seed=7)
    assert first.losses == again.losses and first.seed == 7
    others = {few_shot_losses([a], examples, neg_number=2, seed=s).losses[0] for s in range(4)}
    assert len(others) > 1  # the seed changes which negatives are drawn
    # all negatives (fewer than neg_number is fine) reproduce the plain definition
    assert few_shot_losses([a], EXAMPLES, neg_number=50).losses[0] == pytest.approx(
        reference_encoder_loss(a, EXAMPLES), abs=TOL)


# -- errors ---------------------------------------------------------------------------------------


def test_bad_input_errors(tmp_path):
    a = make_bert(tmp_path / "a", seed=1)
    with pytest.raises(InputError, match="temperature must be more than 0"):
        few_shot_losses([a], EXAMPLES, temperature=0)
    with pytest.raises(InputError, match="model_type= reranker contradicts .*BertModel, an encoder model"):
        few_shot_losses([a], [e for e in EXAMPLES if e["neg"]], model_type="reranker")
    reranker = make_bert(tmp_path / "r", seed=1, model_class="BertForSequenceClassification")
    headless = tmp_path / "headless"
    headless.mkdir()
    for f in reranker.iterdir():  # a reranker config whose weights lost the classifier
        (headless / f.name).write_bytes(f.read_bytes())
    from safetensors.torch import load_file, save_file
    state = {k: v for k, v in load_file(str(reranker / "model.safetensors")).items() if "classifier" not in k}
    save_file(state, str(headless / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InputError, match="lacks tensors a reranker needs to compute its loss: classifier"):
        few_shot_losses([headless], [e for e in EXAMPLES if e["neg"]], model_type="reranker")
    no_tokenizer = make_bert(tmp_path / "bare", seed=1, tokenizer=False)
    with pytest.raises(InputError, match="cannot load its tokenizer"):
        few_shot_losses([no_tokenizer], EXAMPLES)
    with pytest.raises(InputError, match="CUDA is not available|unknown device"):
        if torch.cuda.is_available():
            raise InputError("unknown device")
        few_shot_losses([a], EXAMPLES, device="cuda")


# -- search ---------------------------------------------------------------------------------------


def test_search_on_a_known_function_improves_and_respects_its_budget():
    target = [0.1, 0.6, 0.3]
    calls = []

    def loss(w):
        calls.append(w)
        return sum((x - t) ** 2 for x, t in zip(w, target))

    outcome = search_weights(loss, [1 / 3] * 3, budget=40)
    assert len(calls) == outcome.evaluations <= 40
    assert outcome.loss <= outcome.start_loss and outcome.loss < 0.01
    assert all(w >= 0 for w in outcome.weights) and math.fsum(outcome.weights) == pytest.approx(1.0)
    flat = search_weights(lambda w: 1.0, [0.5, 0.5], budget=10)
    assert flat.weights == [0.5, 0.5] and flat.loss == flat.start_loss  # nothing better: keep the start


def test_search_never_returns_weights_worse_than_the_softmax_start(tmp_path):
    a = make_bert(tmp_path / "a", seed=1, **WIDE)
    b = make_bert(tmp_path / "b", seed=2, **WIDE)
    result = few_shot_losses([a, b], EXAMPLES, search=True, search_budget=8, holdout=0)
    report = result.search
    assert report.evaluations <= 8 and report.holdout_examples == 0
    assert report.start_weights == result.softmax_weights
    assert report.loss <= report.start_loss
    # check independently: merge both weight sets to disk and score them with the reference
    losses = {}
    for name, weights in (("start", report.start_weights), ("found", report.weights)):
        cocktail.merge([a, b], weights, tmp_path / name)
        losses[name] = reference_encoder_loss(tmp_path / name, EXAMPLES, tokenizer_path=a)
    assert losses["found"] <= losses["start"] + TOL
    assert losses["found"] == pytest.approx(report.loss, abs=TOL)


def test_search_keeps_a_holdout_and_reports_both_parts(tmp_path):
    a = make_bert(tmp_path / "a", seed=1, **WIDE)
    b = make_bert(tmp_path / "b", seed=2, **WIDE)
    examples = EXAMPLES * 2  # 10 examples: the default holdout is a fifth
    result = few_shot_losses([a, b], examples, search=True, search_budget=5)
    report = result.search
    assert (report.fit_examples, report.holdout_examples) == (8, 2)
    assert report.start_holdout_loss is not None and report.holdout_loss is not None
    assert len(result.holdout_losses) == 2
    assert few_shot_losses([a, b], examples, search=True, search_budget=5).to_dict() == result.to_dict()


# -- CLI, API and merged output ---------------------------------------------------------------------


@pytest.fixture
def two_wide(tmp_path):
    return make_bert(tmp_path / "a", seed=1, **WIDE), make_bert(tmp_path / "b", seed=2, **WIDE)


def write_examples(path, examples=EXAMPLES):
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


def test_cli_weights_json(tmp_path, two_wide):
    a, b = two_wide
    few = write_examples(tmp_path / "few.jsonl")
    out = run_cli("weights", "--models", a, b, "--examples", few, "--json")
    assert out.returncode == 0, out
    data = json.loads(out.stdout)
    assert data["models"] == [str(a), str(b)]
    assert data["losses"] == few_shot_losses([a, b], EXAMPLES).losses  # same numbers as the API, exactly
    assert data["weights"] == pytest.approx(softmax(data["losses"], 5.0), abs=1e-12)


def test_cli_errors_are_one_line(tmp_path, two_wide):
    a, b = two_wide
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(EXAMPLES[0]) + "\n" + json.dumps({"query": "q", "pos": []}) + "\n")
    out = run_cli("weights", "--models", a, b, "--examples", bad)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: bad.jsonl line 2: 'pos' is empty (give at least one positive passage)"]
    few = write_examples(tmp_path / "few.jsonl")
    both = run_cli("merge", "--models", a, b, "--weights", "0.5", "0.5", "--examples", few, "-o", tmp_path / "o")
    assert both.returncode == 2 and "not both" in both.stderr
    lone = run_cli("merge", "--models", a, b, "--temperature", "2", "-o", tmp_path / "o")
    assert lone.returncode == 2 and "--temperature needs --examples" in lone.stderr
    assert not (tmp_path / "o").exists()


def test_cli_merge_with_examples_records_provenance_and_reruns(tmp_path, two_wide):
    a, b = two_wide
    few = write_examples(tmp_path / "few.jsonl")
    inputs = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    out = run_cli("merge", "--models", a, b, "--examples", few, "--temperature", "0.5", "-o", tmp_path / "mixed",
                  "--quiet")
    assert out.returncode == 0, out
    expected = few_shot_losses([a, b], EXAMPLES, temperature=0.5)
    for model, loss, weight in zip((a, b), expected.losses, expected.weights):  # the table of loss and weight
        assert any(f"{loss:.6g}" in line and f"{weight:.6g}" in line and line.endswith(str(model))
                   for line in out.stdout.splitlines())
    recipe = yaml.safe_load((tmp_path / "mixed" / "cocktail_recipe.yaml").read_text())
    assert [m["weight"] for m in recipe["models"]] == expected.weights
    assert recipe["weights_from"] is None
    details = recipe["provenance"]["weights_from"]
    assert details["losses"] == expected.losses and details["seed"] == 0 and details["temperature"] == 0.5
    assert details["examples_source"] == str(few.absolute())
    merged = read_folder_tensors(tmp_path / "mixed")
    wa, wb = expected.weights
    ta, tb = read_folder_tensors(a), read_folder_tensors(b)
    name = "encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(merged[name], wa * ta[name] + wb * tb[name], atol=1e-6)
    # the dumped recipe reruns with its fixed weights to the same bytes, no examples needed
    few.unlink()
    rerun = Recipe.from_dict(dict(recipe, output=str(tmp_path / "again")))
    run(rerun)
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "mixed" / "model.safetensors").read_bytes()
    assert (snapshot(tmp_path / "a"), snapshot(tmp_path / "b")) == inputs


def test_cli_merge_search(tmp_path, two_wide):
    a, b = two_wide
    few = write_examples(tmp_path / "few.jsonl", EXAMPLES * 2)
    out = run_cli("merge", "--models", a, b, "--examples", few, "--search", "--search-budget", "6",
                  "-o", tmp_path / "mixed", "--json")
    assert out.returncode == 0, out
    summary = json.loads(out.stdout)
    search = summary["weights_from"]["search"]
    assert summary["weights"] == search["weights"] and search["loss"] <= search["start_loss"]
    assert search["holdout_examples"] == 2 and search["evaluations"] <= 6


def test_mix_models_with_data_keeps_lm_cocktails_signature(tmp_path, two_wide):
    a, b = two_wide
    expected = few_shot_losses([a, b], EXAMPLES).weights
    model = cocktail.mix_models_with_data([str(a), str(b)], "encoder", example_ata=EXAMPLES,
                                          output_path=str(tmp_path / "mixed"))
    assert type(model).__name__ == "BertModel"
    recipe = yaml.safe_load((tmp_path / "mixed" / "cocktail_recipe.yaml").read_text())
    assert [m["weight"] for m in recipe["models"]] == expected
    state = model.state_dict()
    ta, tb = read_folder_tensors(a), read_folder_tensors(b)
    name = "embeddings.word_embeddings.weight"
    assert torch.allclose(state[name], expected[0] * ta[name] + expected[1] * tb[name], atol=1e-6)
    with pytest.raises(InputError, match="not both"):
        cocktail.mix_models_with_data([str(a), str(b)], "encoder", EXAMPLES, example_ata=EXAMPLES)


def test_recipe_weights_from_is_checked_before_any_model_is_opened(tmp_path, two_wide):
    a, b = two_wide
    few = write_examples(tmp_path / "few.jsonl")
    base = dict(output=str(tmp_path / "out"))
    cases = [({"examples": str(few), "temprature": 2}, "unknown key 'temprature'"),
             ({"examples": str(few), "neg_number": -1}, "neg-number must be at least 0"),
             ({"examples": str(tmp_path / "missing.jsonl")}, "examples file not found"),
             ({"temperature": 2}, "'examples' is required")]
    for weights_from, message in cases:
        with pytest.raises(InputError, match=message):
            run(Recipe.from_models([a, b], weights_from=weights_from, **base))
    with pytest.raises(InputError, match="either fixed weights or examples"):
        run(Recipe.from_models([a, b], [0.5, 0.5], weights_from={"examples": str(few)}, **base))
    assert not (tmp_path / "out").exists()


def test_cli_options_become_weights_from():
    import click

    from cocktail.cli.options import weights_from_options

    assert weights_from_options({"examples": None, "task": (), "seed": None, "search": None}) is None
    options = weights_from_options({"examples": "few.jsonl", "task": ("FiQA", "ArguAna"), "seed": 0,
                                    "search": True, "temperature": None})
    assert options == {"examples": "few.jsonl", "task": ["FiQA", "ArguAna"], "seed": 0, "search": True}
    assert weights_from_options({"examples": "f", "task": ("FiQA",)})["task"] == "FiQA"
    with pytest.raises(click.UsageError, match="--search-budget needs --search"):
        weights_from_options({"examples": "f", "search_budget": 3, "search": None})
