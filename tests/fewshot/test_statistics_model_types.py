"""RegMean and Fisher merges of every model type cocktail scores: bge-m3 (its heads merged linearly),
cross-encoder rerankers, decoders (GPT-2's Conv1D layers), LLM embedders and LLM rerankers.

For each: weight 1 on one model gives that model back, and equal weights fit the layers (a linear
layer's weight differs from the linear average) while what is not a linear layer's weight is the
linear average."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import (
    DECODER_VOCAB,
    make_bert,
    make_decoder,
    make_m3,
    read_folder_tensors,
    run_cli,
    save_decoder_tokenizer,
)

QUERY_EXAMPLES = [
    {"query": "the cat", "pos": ["a red cat is big"], "neg": ["the sea", "one two three"]},
    {"query": "protein cell", "pos": ["gene brain cell"], "neg": ["water air fire"]},
]
DECODER_EXAMPLES = [{"input": "the cat sat on", "output": "the mat"}, {"input": "a dog runs", "output": "in the park"}]


def bert_reranker(folder, seed):
    return make_bert(folder, seed=seed, model_class="BertForSequenceClassification", initializer_range=0.5)


def save_gpt2(folder, seed):
    """A tiny GPT-2 (Conv1D layers, weights in×out; lm_head tied to the embeddings) with a real tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=DECODER_VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=1,
                        eos_token_id=2, pad_token_id=0, initializer_range=0.2)
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    save_decoder_tokenizer(folder)
    return folder


CASES = {  # model type: (builder, examples, a linear layer's weight, a tensor that is not one)
    "m3": ("encoder", lambda f, s: make_m3(f, seed=s), QUERY_EXAMPLES,
           "encoder.layer.0.attention.self.query.weight", "embeddings.word_embeddings.weight"),
    "reranker": ("reranker", bert_reranker, QUERY_EXAMPLES,
                 "bert.encoder.layer.1.output.dense.weight", "bert.encoder.layer.1.output.dense.bias"),
    "decoder": ("decoder", save_gpt2, DECODER_EXAMPLES, "transformer.h.0.attn.c_attn.weight",
                "transformer.wte.weight"),
    "llm-embedder": ("llm-embedder", lambda f, s: make_decoder(f, seed=s, model_type="mistral", model_class="Model"),
                     QUERY_EXAMPLES, "layers.0.self_attn.q_proj.weight", "embed_tokens.weight"),
    "llm-reranker": ("llm-reranker", lambda f, s: make_decoder(f, seed=s, model_type="qwen2"), QUERY_EXAMPLES,
                     "model.layers.1.mlp.down_proj.weight", "model.norm.weight"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["regmean", "fisher"])
def test_data_aware_merge_of_each_model_type(tmp_path, case, method):
    model_type, build, examples, linear_weight, other = CASES[case]
    a, b = build(tmp_path / "a", 1), build(tmp_path / "b", 2)
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(e) for e in examples))
    common = ["--models", a, b, "--model-type", model_type, "--method", method, "--examples", tmp_path / "t.jsonl",
              "-q"]
    one = run_cli("merge", *common, "--weights", "1", "0", "--output", tmp_path / "one")
    assert one.returncode == 0, one
    half = run_cli("merge", *common, "--output", tmp_path / "half")
    assert half.returncode == 0, half
    first, second = read_folder_tensors(a), read_folder_tensors(b)
    for name, tensor in read_folder_tensors(tmp_path / "one").items():
        assert torch.allclose(tensor, first[name], rtol=1e-4, atol=1e-5), name
    merged = read_folder_tensors(tmp_path / "half")
    average = {name: 0.5 * first[name] + 0.5 * second[name] for name in (linear_weight, other)}
    assert not torch.allclose(merged[linear_weight], average[linear_weight], atol=1e-4)
    if method == "regmean":
        assert torch.allclose(merged[other], average[other], atol=1e-6)
    if case == "m3":
        heads = [p.name for p in (tmp_path / "half").glob("*.pt")]
        assert sorted(heads) == ["colbert_linear.pt", "sparse_linear.pt"]  # merged (linearly), not dropped
