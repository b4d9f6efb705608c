"""The LLM-based BGE shapes: a decoder embedder and decoder rerankers (plain, and a layerwise one with
its own modelling code) merge, load and score as FlagEmbedding computes it.

FlagEmbedding itself does not import under transformers 5, so the references here follow its
inference code (``FlagLLMModel``, ``FlagLLMReranker``, ``LayerWiseFlagLLMReranker``) step by step on
models loaded with transformers' own ``from_pretrained``, not through cocktail.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import decoder_config, make_decoder, read_folder_tensors, run_cli, save_decoder_tokenizer

import cocktail
from cocktail.errors import InputError

PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by "
          "providing a prediction of either 'Yes' or 'No'.")
EXAMPLES = [
    {"query": "the cat sat", "pos": ["the cat sat on the mat"], "neg": ["red car blue car", "the sun and the moon"]},
    {"query": "capital of france", "pos": ["paris is the capital"], "neg": ["a dog runs in the park"]},
    {"query": "protein cell", "pos": ["science paper claim study result protein cell gene"],
     "neg": ["merge models with a cocktail of weights", "the moon"]},
]
STS = [("the cat sat on the mat", "a cat sat on a mat", 4.5), ("red car", "blue car", 3.0),
       ("the sun", "a dog runs in the park", 0.5), ("paris is the capital", "what is the capital of france", 2.5)]

# -- a tiny layerwise reranker with its own code, as bge-reranker-v2-minicpm-layerwise ships one -------

LAYERWISE_CODE = '''
import os
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

if os.environ.get("COCKTAIL_TEST_MARKER"):
    Path(os.environ["COCKTAIL_TEST_MARKER"]).write_text("the folder's code ran")


class LayerWiseConfig(LlamaConfig):
    model_type = "tiny-layerwise"

    def __init__(self, start_layer=1, head_type="simple", head_multi=True, **kwargs):
        self.start_layer = start_layer
        self.head_type = head_type
        self.head_multi = head_multi
        super().__init__(**kwargs)


class LayerWiseHead(nn.Module):
    def __init__(self, input_size, output_size):
        super().__init__()
        self.linear_head = nn.Linear(input_size, output_size, bias=False)


class LayerWiseForCausalLM(PreTrainedModel):
    config_class = LayerWiseConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = nn.ModuleList([LayerWiseHead(config.hidden_size, 1)
                                      for _ in range(config.start_layer, config.num_hidden_layers + 1)])
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, cutoff_layers=None, output_hidden_states=True, **kwargs):
        if cutoff_layers is None:
            cutoff_layers = [self.config.num_hidden_layers]
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        logits = tuple(self.lm_head[i - self.config.start_layer].linear_head(outputs.hidden_states[i]).float()
                       .reshape(input_ids.shape[0], -1) for i in cutoff_layers)
        return CausalLMOutputWithPast(logits=logits)
'''


def make_layerwise(folder: Path, seed: int) -> Path:
    """A tiny layerwise reranker: its config asks for its own code (``auto_map``); saved by that code."""
    import importlib.util

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modeling_layerwise.py").write_text(LAYERWISE_CODE)
    spec = importlib.util.spec_from_file_location(f"layerwise_{seed}", folder / "modeling_layerwise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = decoder_config(num_hidden_layers=3).to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        base.pop(key, None)
    config = module.LayerWiseConfig(start_layer=1, **base)
    config.auto_map = {"AutoConfig": "modeling_layerwise.LayerWiseConfig",
                       "AutoModelForCausalLM": "modeling_layerwise.LayerWiseForCausalLM"}
    config.architectures = ["LayerWiseForCausalLM"]
    torch.manual_seed(seed)
    module.LayerWiseForCausalLM(config).save_pretrained(str(folder))
    save_decoder_tokenizer(folder)
    return folder


# -- FlagEmbedding's computations, step by step (the references) ------------------------------------


def flag_pair_inputs(tokenizer, query, passage, prompt=None, max_length=512):
    """``FlagLLMReranker.compute_score_single_gpu``'s input for one pair."""
    query_inputs = tokenizer("A: " + query, return_tensors=None, add_special_tokens=False,
                             max_length=max_length * 3 // 4, truncation=True)
    passage_inputs = tokenizer("B: " + passage, return_tensors=None, add_special_tokens=False,
                               max_length=max_length, truncation=True)
    prompt_inputs = tokenizer(prompt or PROMPT, return_tensors=None, add_special_tokens=False)["input_ids"]
    sep_inputs = tokenizer("\n", return_tensors=None, add_special_tokens=False)["input_ids"]
    first = [tokenizer.bos_token_id] + query_inputs["input_ids"]
    second = sep_inputs + passage_inputs["input_ids"]
    # prepare_for_model(first, second, truncation="only_second", max_length=...), which transformers 5's fast
    # tokenizers no longer have: the right end of the second part goes
    limit = max_length + len(sep_inputs) + len(prompt_inputs)
    while len(first) + len(second) > limit:
        second = second[:-1]
    return first + second + sep_inputs + prompt_inputs


def flag_rerank(folder, pairs, prompt=None, layerwise=False):
    """The score FlagEmbedding gives each pair: one pair at a time, the last position's logit."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=layerwise).float().eval()
    yes = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    scores = []
    with torch.no_grad():
        for query, passage in pairs:
            ids = torch.tensor([flag_pair_inputs(tokenizer, query, passage, prompt)])
            if layerwise:
                scores.append(float(model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                          output_hidden_states=True).logits[-1][0, -1]))
            else:
                scores.append(float(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1, yes]))
    return scores


def flag_embed(folder, texts):
    """``FlagLLMModel``'s embeddings: default tokenisation, last-token pooling, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).float().eval()
    out = []
    with torch.no_grad():
        for text in texts:
            batch = tokenizer([text], truncation=True, max_length=512, return_tensors="pt")
            hidden = model(**batch, return_dict=True).last_hidden_state
            out.append(torch.nn.functional.normalize(hidden[0, -1], dim=-1))
    return torch.stack(out)


def reranker_loss(scores_per_query) -> float:
    """LM-Cocktail's reranker loss: cross-entropy of each query's positive against its negatives."""
    return sum(float(-torch.log_softmax(torch.tensor(s, dtype=torch.float64), 0)[0]) for s in scores_per_query) \
        / len(scores_per_query)


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def data(tmp_path):
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n")
    sts = tmp_path / "sts.tsv"
    sts.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in STS))
    return few, sts


@pytest.fixture
def env(tmp_path):
    return {"COCKTAIL_TEST_MARKER": str(tmp_path / "marker"), "HF_MODULES_CACHE": str(tmp_path / "modules")}


# -- the layerwise reranker -------------------------------------------------------------------------


def test_a_layerwise_reranker_with_its_own_code_merges_without_running_it(tmp_path, env, data, monkeypatch):
    from transformers import AutoModelForCausalLM

    a, b = make_layerwise(tmp_path / "a", 1), make_layerwise(tmp_path / "b", 2)
    assert "lm_head.2.linear_head.weight" in read_folder_tensors(a)  # one head per layer from start_layer
    result = run_cli("merge", "--models", a, b, "--weights", "0.3", "0.7", "--model-type", "llm-reranker",
                     "--output", tmp_path / "out", "--quiet", env=env)
    assert result.returncode == 0, result
    assert not Path(env["COCKTAIL_TEST_MARKER"]).exists()  # merging read the files, never ran the code
    out = tmp_path / "out"
    assert (out / "modeling_layerwise.py").read_text() == LAYERWISE_CODE
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == \
        "modeling_layerwise.LayerWiseForCausalLM"

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    merged = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    expected = AutoModelForCausalLM.from_pretrained(a, trust_remote_code=True).eval()
    ta, tb = read_folder_tensors(a), read_folder_tensors(b)
    expected.load_state_dict({n: 0.3 * ta[n] + 0.7 * tb[n] for n in ta}, strict=False)
    ids = torch.tensor([[1, 30, 40, 50, 60, 70]])
    with torch.no_grad():
        for got, want in zip(merged(input_ids=ids, cutoff_layers=[1, 2, 3]).logits,
                             expected(input_ids=ids, cutoff_layers=[1, 2, 3]).logits):
            assert torch.allclose(got, want, atol=1e-5)

    # and it evaluates: scores as LayerWiseFlagLLMReranker's (last layer's head), only with the flag
    few, sts = data
    refused = run_cli("eval", "--model-type", "llm-reranker", "--models", out, "--data", few, "--quiet",
                      env={**env, "COCKTAIL_TEST_MARKER": str(tmp_path / "marker2")})
    assert refused.returncode == 2 and "--trust-remote-code" in refused.stderr, refused
    assert not (tmp_path / "marker2").exists()
    from cocktail.modeling.llm_reranker import LLMReranker

    reranker = LLMReranker.open(str(out), trust_remote_code=True, device="cpu")
    pairs = [(q, p) for e in EXAMPLES for q, p in [(e["query"], t) for t in e["pos"] + e["neg"]]]
    assert reranker.score(pairs) == pytest.approx(flag_rerank(out, pairs, layerwise=True), abs=1e-4)
    rows = cocktail.evaluate_models([str(out)], [str(few), str(sts)], model_type="llm-reranker",
                                    trust_remote_code=True)
    assert {r["metric"] for r in rows} == {"ndcg@10", "mrr@10", "recall@10", "recall@100", "spearman"}


def test_layer_heads_are_addressed_by_per_tensor_weights(tmp_path):
    a, b = make_layerwise(tmp_path / "a", 1), make_layerwise(tmp_path / "b", 2)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""model_type: llm-reranker
models:
  - path: {a}
    weight: [{{filter: 'lm_head\\.0\\.', value: 1.0}}, {{value: 0.5}}]
  - path: {b}
    weight: [{{filter: 'lm_head\\.0\\.', value: 0.0}}, {{value: 0.5}}]
output: {tmp_path / 'out'}
""")
    result = run_cli("run", recipe, "--quiet")
    assert result.returncode == 0, result
    out, ta, tb = (read_folder_tensors(p) for p in (tmp_path / "out", a, b))
    assert torch.equal(out["lm_head.0.linear_head.weight"], ta["lm_head.0.linear_head.weight"])
    assert torch.allclose(out["lm_head.2.linear_head.weight"],
                          0.5 * ta["lm_head.2.linear_head.weight"] + 0.5 * tb["lm_head.2.linear_head.weight"])


# -- a plain decoder reranker (bge-reranker-v2-gemma's shape) ---------------------------------------


@pytest.mark.parametrize("model_type", ["gemma2", "qwen2"])
def test_a_decoder_reranker_scores_the_yes_logit_as_flag_llm_reranker(tmp_path, data, model_type):
    from cocktail.modeling.llm_reranker import LLMReranker

    folder = make_decoder(tmp_path / "m", seed=3, model_type=model_type)
    pairs = [("the cat sat", "the cat sat on the mat"), ("capital of france", "a dog runs in the park"),
             ("red car", "x" * 300)]  # a passage longer than it may be: truncated as FlagEmbedding truncates
    reranker = LLMReranker.open(str(folder), device="cpu", max_length=64)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    from cocktail.modeling.llm_reranker import pair_ids

    assert pair_ids(tokenizer, "red car", "x" * 300, None, 64) == flag_pair_inputs(tokenizer, "red car", "x" * 300,
                                                                                 max_length=64)
    assert reranker.score(pairs[:2]) == pytest.approx(flag_rerank(folder, pairs[:2]), abs=1e-4)
    custom = "Is B about A? Yes or No."
    assert reranker.score(pairs[:2], custom) == pytest.approx(flag_rerank(folder, pairs[:2], custom), abs=1e-4)


def test_few_shot_weights_of_decoder_rerankers_follow_their_yes_logits(tmp_path, data):
    few, _ = data
    models = [make_decoder(tmp_path / f"m{i}", seed=i, model_type="qwen2") for i in (1, 2)]
    result = run_cli("weights", "--model-type", "llm-reranker", "--models", *models, "--examples", few, "--json",
                     "--quiet", "--batch-size", "3")
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    for model, loss in zip(models, report["losses"]):
        scores = [flag_rerank(model, [(e["query"], p) for p in e["pos"][:1] + e["neg"]]) for e in EXAMPLES]
        assert loss == pytest.approx(reranker_loss(scores), abs=1e-4)
    expected = [math.exp(-x / 5) for x in report["losses"]]
    assert report["weights"] == pytest.approx([w / sum(expected) for w in expected])


def test_a_lora_adapter_on_a_decoder_reranker_evaluates_as_its_merge(tmp_path, data):
    from conftest import make_lora
    from peft import LoraConfig

    few, _ = data
    base = make_decoder(tmp_path / "base", seed=3, model_type="qwen2")
    make_lora(base, tmp_path / "lora", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
              "Qwen2ForCausalLM")
    cocktail.merge([str(tmp_path / "lora")], [1.0], tmp_path / "merged", model_type="llm-reranker")
    rows = cocktail.evaluate_models([str(tmp_path / "lora"), str(tmp_path / "merged")], [str(few)],
                                    model_type="llm-reranker", labels=["lora", "merged"])
    by_model = {m: {r["metric"]: r["value"] for r in rows if r["model"] == m} for m in ("lora", "merged")}
    assert by_model["lora"] == by_model["merged"]


# -- a decoder embedder (bge-en-icl's shape) --------------------------------------------------------


def test_a_decoder_embedder_merges_loads_and_embeds_as_flag_llm_model(tmp_path, data):
    from cocktail.modeling.llm_embedder import LLMEmbedder

    few, sts = data
    a = make_decoder(tmp_path / "a", seed=1, model_type="mistral", model_class="Model")
    b = make_decoder(tmp_path / "b", seed=2, model_type="mistral", model_class="Model")
    result = run_cli("merge", "--models", a, b, "--model-type", "llm-embedder", "--output", tmp_path / "out",
                     "--quiet")
    assert result.returncode == 0, result
    out = tmp_path / "out"
    assert not (out / "modules.json").exists()  # BGE's CLS pooling files are for encoders only
    texts = ["the cat sat on the mat", "red car"]
    embedder = LLMEmbedder.open(str(out), device="cpu")
    assert torch.allclose(embedder.encode(texts), flag_embed(out, texts), atol=1e-5)
    task = "Given a claim, find passages"
    assert embedder.query_text("the cat", task) == f"<instruct>{task}\n<query>the cat"
    assert embedder.query_text("the cat", None) == "the cat"
    rows = cocktail.evaluate_models([str(a), str(out)], [str(few), str(sts)], task, model_type="llm-embedder")
    assert {r["metric"] for r in rows} == {"ndcg@10", "mrr@10", "recall@10", "recall@100", "spearman"}
    cli = run_cli("eval", "--model-type", "llm-embedder", "--models", out, "--data", sts, "--json", "--quiet")
    assert cli.returncode == 0, cli
    assert json.loads(cli.stdout)[0]["value"] == pytest.approx(
        next(r["value"] for r in rows if r["model"] == str(out) and r["metric"] == "spearman"))


def test_few_shot_weights_of_decoder_embedders_use_last_tokens_and_the_instruct_prompt(tmp_path, data):
    few, _ = data
    task = "Given a query, find the passage"
    models = [make_decoder(tmp_path / f"m{i}", seed=i, model_type="mistral") for i in (1, 2)]
    result = run_cli("weights", "--model-type", "llm-embedder", "--models", *models, "--examples", few, "--json",
                     "--quiet", "--query-instruction", task, "--batch-size", "3")
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    for model, loss in zip(models, report["losses"]):
        queries = flag_embed(model, [f"<instruct>{task}\n<query>{e['query']}" for e in EXAMPLES])
        passages = [t for e in EXAMPLES for t in e["pos"][:1] + e["neg"]]
        scores = queries @ flag_embed(model, passages).T / 0.05
        targets, at = [], 0
        for e in EXAMPLES:
            targets.append(at)
            at += 1 + len(e["neg"])
        expected = float(torch.nn.functional.cross_entropy(scores, torch.tensor(targets)))
        assert loss == pytest.approx(expected, abs=1e-4)
    assert report["pooling"].startswith("default (LLM embedders")


def test_eval_refuses_what_it_cannot_score(tmp_path, data):
    few, _ = data
    folder = make_decoder(tmp_path / "m", seed=1)
    beir = Path(__file__).resolve().parents[2] / "examples" / "data" / "scifact"
    with pytest.raises(InputError, match="a reranker reranks candidates of a BEIR folder: give candidates="):
        cocktail.evaluate_models([str(folder)], [str(beir)], model_type="llm-reranker")
    with pytest.raises(InputError, match="cocktail eval scores"):
        cocktail.evaluate_models([str(folder)], [str(few)], model_type="decoder")
