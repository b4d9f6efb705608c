"""CocktailCallback in real (tiny, CPU, a few steps) transformers and sentence-transformers training runs."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_bert, read_folder_tensors, run_cli
from safetensors.torch import load_file

import cocktail

pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")


def half_half(a: dict, b: dict) -> dict:
    return {k: (v.float() * 0.5 + b[k].float() * 0.5).to(v.dtype) if v.is_floating_point() else v
            for k, v in a.items()}


def assert_close(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        assert torch.allclose(actual[name].float(), expected[name].float(), rtol=1e-6, atol=1e-7), name


def frozen(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Pairs(torch.utils.data.Dataset):
    """A few token-id sequences with a regression label (a tiny reranker task)."""

    def __init__(self, n: int = 16):
        generator = torch.Generator().manual_seed(0)
        self.items = [{"input_ids": torch.randint(5, len(VOCAB), (8,), generator=generator),
                       "attention_mask": torch.ones(8, dtype=torch.long),
                       "labels": torch.rand((), generator=generator)} for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.fixture
def base(tmp_path):
    return make_bert(tmp_path / "base", seed=1, model_class="BertForSequenceClassification")


def trainer_for(base, tmp_path, callback, **args):
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    model = BertForSequenceClassification.from_pretrained(str(base))
    options = dict(output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                   report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
    options.update(args)
    return Trainer(model=model, args=TrainingArguments(**options), train_dataset=Pairs(), callbacks=[callback])


def test_merges_once_at_train_end_like_the_cli(tmp_path, base):
    callback = cocktail.CocktailCallback(base=base, weights=[0.5, 0.5], output_dir=tmp_path / "cocktail",
                                         model_type="reranker")
    trainer = trainer_for(base, tmp_path, callback)
    trainer.train()
    assert callback.outputs == [tmp_path / "cocktail"]
    trained = frozen(trainer.model)
    base_tensors = load_file(str(base / "model.safetensors"))
    assert not torch.equal(trained["bert.pooler.dense.weight"], base_tensors["bert.pooler.dense.weight"])
    merged = read_folder_tensors(tmp_path / "cocktail")
    assert_close(merged, half_half(trained, base_tensors))
    # the same weights through the CLI: the same bytes
    trainer.save_model(str(tmp_path / "trained"))
    cli = run_cli("merge", "--models", tmp_path / "trained", base, "--weights", 0.5, 0.5, "--model-type", "reranker",
                  "--output", tmp_path / "cli", "-q")
    assert cli.returncode == 0, cli
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "cocktail" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    assert (tmp_path / "cocktail" / "tokenizer.json").is_file()  # the trainer's tokenizer, or the base's


def test_merges_at_every_save_with_on_save(tmp_path, base):
    callback = cocktail.CocktailCallback(base=base, output_dir=tmp_path / "cocktail", on="save", model_type="reranker")
    trainer_for(base, tmp_path, callback, save_strategy="steps", save_steps=2).train()
    assert callback.outputs == [tmp_path / "cocktail" / "checkpoint-2", tmp_path / "cocktail" / "checkpoint-4"]
    assert not (tmp_path / "cocktail" / "final").exists()
    base_tensors = load_file(str(base / "model.safetensors"))
    for step in (2, 4):
        saved = load_file(str(tmp_path / "run" / f"checkpoint-{step}" / "model.safetensors"))
        merged = read_folder_tensors(tmp_path / "cocktail" / f"checkpoint-{step}")
        assert_close(merged, half_half(saved, base_tensors))


def test_save_and_train_end_together(tmp_path, base):
    callback = cocktail.CocktailCallback(base=base, output_dir=tmp_path / "c", on=("save", "train_end"),
                                         model_type="reranker")
    trainer_for(base, tmp_path, callback, save_strategy="steps", save_steps=3).train()
    assert callback.outputs == [tmp_path / "c" / "checkpoint-3", tmp_path / "c" / "checkpoint-4",
                                tmp_path / "c" / "final"]


def test_the_model_being_trained_is_never_changed(tmp_path, base):
    from transformers import BertForSequenceClassification, TrainerControl, TrainerState, TrainingArguments

    model = BertForSequenceClassification.from_pretrained(str(base))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    model.train()
    model.classifier.weight.grad = torch.full_like(model.classifier.weight, 3.0)
    before = frozen(model)
    callback = cocktail.CocktailCallback(base=base, weights=[0.25, 0.75], output_dir=tmp_path / "out",
                                         model_type="reranker")
    args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    callback.on_train_end(args, TrainerState(), TrainerControl(), model=model)
    after = frozen(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model.classifier.weight.grad, torch.full_like(model.classifier.weight, 3.0))
    assert model.training
    base_tensors = load_file(str(base / "model.safetensors"))
    expected = {k: (v.float() * 0.25 + base_tensors[k].float() * 0.75) for k, v in before.items()}
    assert_close(read_folder_tensors(tmp_path / "out"), expected)


def test_an_existing_output_is_refused_before_training(tmp_path, base):
    (tmp_path / "cocktail").mkdir()
    callback = cocktail.CocktailCallback(base=base, output_dir=tmp_path / "cocktail", model_type="reranker")
    trainer = trainer_for(base, tmp_path, callback)
    with pytest.raises(cocktail.OutputError, match="already exists"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_missing_base_is_refused_before_training(tmp_path, base):
    callback = cocktail.CocktailCallback(base=tmp_path / "nowhere", output_dir=tmp_path / "c")
    trainer = trainer_for(base, tmp_path, callback)
    with pytest.raises(cocktail.InputError, match="model not found"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_bad_arguments_are_cocktail_errors(base):
    with pytest.raises(cocktail.InputError, match="on must be"):
        cocktail.CocktailCallback(base=base, on="epoch")
    with pytest.raises(cocktail.InputError, match="got 3 weights for 2 models"):
        cocktail.CocktailCallback(base=base, weights=[0.2, 0.3, 0.5])
    with pytest.raises(cocktail.InputError, match="needs examples"):
        cocktail.CocktailCallback(base=base, weights="examples")


def test_sentence_transformer_trainer(tmp_path):
    pytest.importorskip("datasets")
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    source = make_bert(tmp_path / "bert", seed=1)
    base_model = SentenceTransformer(modules=[Transformer(str(source)), Pooling(32, "mean")], device="cpu")
    base_model.save(str(tmp_path / "base"), create_model_card=False)
    model = SentenceTransformer(str(tmp_path / "base"), device="cpu")
    words = VOCAB[5:]
    data = Dataset.from_dict({"anchor": [f"{words[i]} {words[i + 1]}" for i in range(8)],
                              "positive": [f"{words[i + 1]} {words[i]} {words[i + 2]}" for i in range(8)]})
    callback = cocktail.CocktailCallback(base=tmp_path / "base", weights=[0.5, 0.5], output_dir=tmp_path / "mixed")
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2,
                                                per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
                                                use_cpu=True, save_strategy="no", logging_strategy="no",
                                                disable_tqdm=True, seed=0)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=MultipleNegativesRankingLoss(model),
                               callbacks=[callback]).train()
    assert callback.outputs == [tmp_path / "mixed"]
    base_tensors = load_file(str(tmp_path / "base" / "model.safetensors"))
    trained = {k: v for k, v in frozen(model[0].auto_model).items() if k in base_tensors}
    assert_close(read_folder_tensors(tmp_path / "mixed"), half_half(trained, base_tensors))
    merged = SentenceTransformer(str(tmp_path / "mixed"), device="cpu")
    assert type(merged[1]).__name__ == "Pooling" and merged[1].get_config_dict()["pooling_mode"] == "mean"


def test_regmean_merge_at_train_end_like_the_cli(tmp_path, base):
    """A data-aware merge from inside training: the trained model's statistics on examples=, the base's on
    keep=; the same merge as `cocktail merge --method regmean` of the saved model."""
    import json

    target = [{"query": "the cat", "pos": ["a red cat"], "neg": ["the sea"]},
              {"query": "gene", "pos": ["protein cell gene"], "neg": ["fast car", "moon"]}]
    keep = [{"query": "blue sky", "pos": ["the sky is blue"], "neg": ["a dog"]}]
    callback = cocktail.CocktailCallback(base=base, weights=[0.7, 0.3], output_dir=tmp_path / "cocktail",
                                         model_type="reranker", method="regmean", examples=target, keep=keep)
    trainer = trainer_for(base, tmp_path, callback)
    trainer.train()
    trainer.save_model(str(tmp_path / "trained"))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(tmp_path / "trained"))  # the CLI scores with it
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(e) for e in target))
    (tmp_path / "k.jsonl").write_text("\n".join(json.dumps(e) for e in keep))
    cli = run_cli("merge", "--models", tmp_path / "trained", base, "--base", base, "--weights", 0.7, 0.3,
                  "--method", "regmean", "--examples", tmp_path / "t.jsonl", "--keep", tmp_path / "k.jsonl",
                  "--model-type", "reranker", "--output", tmp_path / "cli", "-q")
    assert cli.returncode == 0, cli
    merged, expected = read_folder_tensors(tmp_path / "cocktail"), read_folder_tensors(tmp_path / "cli")
    assert_close(merged, expected)
    trained = frozen(trainer.model)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    linear = 0.7 * trained[name] + 0.3 * load_file(str(base / "model.safetensors"))[name]
    assert not torch.allclose(merged[name], linear, atol=1e-4)  # fitted, not averaged


def test_regmean_callback_needs_examples(base):
    with pytest.raises(cocktail.InputError, match="examples="):
        cocktail.CocktailCallback(base=base, method="regmean")
