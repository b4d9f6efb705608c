"""The search against a keep set, layer-group weights and the frontier: what is searched is what is
written, the keep loss stays within its tolerance, and a layer-group answer is an ordinary recipe."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import assert_png, make_bert, read_folder_tensors, run_cli
from safetensors.torch import load_file
from test_fewshot import WIDE, reference_encoder_loss

import cocktail
from cocktail.errors import InputError
from cocktail.fewshot import layer_groups
from cocktail.fewshot.objective import OVER_LIMIT, Objective
from cocktail.fewshot.search import search_group_weights, search_weights
from cocktail.fewshot.weighting import few_shot_losses
from cocktail.io.adapters import open_path
from cocktail.merging.plan import build_plan
from cocktail.merging.schedules import Schedule, TensorName

TARGET = [
    {"query": "red car", "pos": ["a fast red car"], "neg": ["the moon", "a green tree"]},
    {"query": "blue car", "pos": ["a slow blue car"], "neg": ["the sun", "a big dog"]},
    {"query": "green car", "pos": ["a big green car"], "neg": ["the sea", "a small cat"]},
    {"query": "fast car", "pos": ["the car is fast"], "neg": ["the sky", "a red fire"]},
    {"query": "big car", "pos": ["a car that is big"], "neg": ["one star", "two trees"]},
    {"query": "small car", "pos": ["a small car"], "neg": ["the earth", "water and air"]},
]
KEEP = [
    {"query": "protein cell", "pos": ["gene and cell"], "neg": ["fast car", "red car"]},
    {"query": "the brain", "pos": ["a brain cell"], "neg": ["blue car", "big car"]},
    {"query": "science paper", "pos": ["a study result"], "neg": ["green car", "small car"]},
    {"query": "the moon", "pos": ["moon and star"], "neg": ["car is fast", "slow car"]},
]


def fine_tune(base, folder, examples, steps=12, lr=5e-3):
    """``base`` fine-tuned on ``examples`` with the in-batch InfoNCE loss (transformers and torch only)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModel.from_pretrained(str(base)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    queries = [e["query"] for e in examples]
    passages = [e["pos"][0] for e in examples]
    for _ in range(steps):
        q = model(**tokenizer(queries, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
        p = model(**tokenizer(passages, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
        scores = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(p, dim=-1).T / 0.05
        loss = torch.nn.functional.cross_entropy(scores, torch.arange(len(examples)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def base_and_tuned(tmp_path_factory):
    """A tiny 2-layer BERT and its fine-tune on TARGET: the fine-tune is better on TARGET."""
    root = tmp_path_factory.mktemp("tuned")
    base = make_bert(root / "base", seed=3, **WIDE)
    tuned = fine_tune(base, root / "tuned", TARGET)
    for name, data in (("target.jsonl", TARGET), ("keep.jsonl", KEEP)):
        (root / name).write_text("".join(json.dumps(e) + "\n" for e in data))
    return base, tuned, root / "target.jsonl", root / "keep.jsonl"


# -- layer groups ----------------------------------------------------------------------------------


def test_layer_groups_are_contiguous_with_embeddings_first_and_heads_last(tmp_path):
    model = make_bert(tmp_path / "six", num_hidden_layers=6, model_class="BertModel")
    with open_path(model) as checkpoint:
        plan = build_plan([checkpoint, checkpoint])
        groups = layer_groups.tensor_groups(plan, 3)
        by_name = dict(zip((t.canonical for t in plan.tensors), groups))
        assert layer_groups.describe(plan, 3)[1]["layers"] == [2, 3]
    expected_layer_group = {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2}
    assert by_name  # every tensor: embeddings in group 0, layers in theirs, the pooler in the last
    for name, group in by_name.items():
        if name.startswith("embeddings."):
            assert group == 0, name
        elif name.startswith("encoder.layer."):
            assert group == expected_layer_group[int(name.split(".")[2])], name
        else:
            assert name.startswith("pooler.") and group == 2, name
    assert layer_groups.group_layers(6, 4) == [(0, 0), (1, 2), (3, 3), (4, 5)]
    with pytest.raises(InputError, match="more groups than the model has layers"):
        layer_groups.group_layers(6, 7)


def test_layer_groups_of_a_decoder_put_the_head_and_final_norm_last():
    schedule = Schedule.parse(layer_groups.schedules([[0.1, 0.9], [0.5, 0.5], [0.8, 0.2]], 6)[0], "w")

    def weight(name):
        return schedule.lookup(TensorName.of(name, name.removeprefix("model.")), 6)[1]

    assert weight("model.embed_tokens.weight") == weight("model.layers.1.mlp.up_proj.weight") == 0.1
    assert weight("model.layers.2.self_attn.q_proj.weight") == weight("model.layers.3.input_layernorm.weight") == 0.5
    assert weight("model.layers.5.mlp.down_proj.weight") == weight("lm_head.weight") == 0.8
    assert weight("model.norm.weight") == 0.8
    assert layer_groups.schedules([[0.3, 0.7]], 6) == [0.3, 0.7]  # one group: plain weights


# -- the search and its objective ------------------------------------------------------------------


def test_group_search_finds_a_different_optimum_per_group_within_its_budget():
    def loss(groups):
        return (groups[0][0] - 0.75) ** 2 + (groups[1][0] - 0.25) ** 2

    outcome = search_group_weights(loss, [[0.5, 0.5], [0.5, 0.5]], budget=40)
    assert outcome.evaluations <= 40 and len(outcome.trace) == outcome.evaluations
    assert outcome.weights[0][0] == pytest.approx(0.75, abs=1 / 64)
    assert outcome.weights[1][0] == pytest.approx(0.25, abs=1 / 64)
    assert all(math.isclose(sum(g), 1.0) and min(g) >= 0 for g in outcome.weights)
    one = search_weights(lambda w: loss([w, w]), [0.5, 0.5], budget=40)  # one weight for both cannot
    assert one.loss >= 0.125 - 1e-12 > outcome.loss


def test_the_tolerance_objective_prefers_any_allowed_merge_and_walks_back_in():
    objective = Objective.make([0.40, 0.90], tolerance=0.1, keep_weight=None)
    assert objective.limit == pytest.approx(0.5)
    assert objective.value(2.0, 0.5) == 2.0  # allowed: its loss
    assert objective.value(2.0, 0.5) < objective.value(0.1, 0.51)  # over the limit loses to any allowed merge
    assert objective.value(0.1, 0.6) > objective.value(0.1, 0.55) > OVER_LIMIT  # ranked by how far over
    trade = Objective.make([0.4, 0.9], tolerance=None, keep_weight=2.0)
    assert trade.value(1.0, 0.5) == pytest.approx(2.0) and trade.allowed(5.0)
    assert Objective.make(None, None, None).value(1.5, None) == 1.5


# -- the whole path: search, report, write, rerun --------------------------------------------------


def test_keep_tolerance_bounds_the_answer_and_layer_groups_write_the_merge_that_was_scored(base_and_tuned, tmp_path):
    base, tuned, target, keep = base_and_tuned
    options = {"examples": str(target), "keep": str(keep), "keep_tolerance": 0.0, "search": True,
               "search_space": "layers:2", "search_budget": 14, "holdout": 0}
    cocktail.merge([tuned, base], weights="examples", examples=options, output=tmp_path / "out")
    recipe = (tmp_path / "out" / "cocktail_recipe.yaml").read_text()
    few = cocktail.Recipe.from_yaml(tmp_path / "out" / "cocktail_recipe.yaml").provenance["weights_from"]
    search = few["search"]
    losses, keeps = few["losses"], few["keep_losses"]
    assert losses[0] < losses[1]  # the fine-tune is better on its task
    best_keep = min(range(2), key=keeps.__getitem__)
    # the answer: within the keep limit (tolerance 0: no worse than the best input on the keep set) ...
    assert search["objective"]["keep_limit"] == pytest.approx(keeps[best_keep])
    assert search["keep_loss"] <= keeps[best_keep] + 1e-9
    # ... and at least as good on the target as that input (it is among the candidates)
    assert search["loss"] <= losses[best_keep] + 1e-9
    # the merge written is the merge scored: an independent transformers computation of its losses
    assert reference_encoder_loss(tmp_path / "out", TARGET) == pytest.approx(search["loss"], abs=1e-5)
    assert reference_encoder_loss(tmp_path / "out", KEEP) == pytest.approx(search["keep_loss"], abs=1e-5)
    # per-group weights, written as an ordinary per-tensor recipe: each tensor is w_g * tuned + (1 - w_g) * base
    groups = search["group_weights"]
    assert len(groups) == 2 and "filter:" in recipe
    merged = read_folder_tensors(tmp_path / "out")
    inputs = [load_file(str(folder / "model.safetensors")) for folder in (tuned, base)]
    for name, tensor in merged.items():
        layer = int(name.split(".")[2]) if name.startswith("encoder.layer.") else None
        group = 0 if name.startswith("embeddings.") or (layer is not None and layer < 1) else 1
        w = groups[group]
        expected = w[0] * inputs[0][name].float() + w[1] * inputs[1][name].float()
        assert torch.allclose(tensor, expected, atol=1e-6), name
    # cocktail run of the written recipe gives the same tensors
    rerun = cocktail.Recipe.from_yaml(tmp_path / "out" / "cocktail_recipe.yaml")
    rerun.output = str(tmp_path / "again")
    cocktail.run(rerun)
    again = read_folder_tensors(tmp_path / "again")
    assert again.keys() == merged.keys() and all(torch.equal(again[k], merged[k]) for k in merged)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Keep set: 4 examples (`keep.jsonl`" in card and "at most 0 above the best input's" in card
    assert "layers 0-0 and embeddings" in card and "search space `layers:2`" in card


def test_cli_weights_plot_and_json_carry_every_evaluated_merge(base_and_tuned, tmp_path):
    base, tuned, target, keep = base_and_tuned
    plot = tmp_path / "frontier.png"
    out = run_cli("weights", "--models", tuned, base, "--examples", target, "--keep", keep, "--search",
                  "--search-budget", "6", "--holdout", "0", "--plot", plot, "--json")
    assert out.returncode == 0, out
    data = json.loads(out.stdout)
    search = data["search"]
    assert len(search["points"]) == search["evaluations"] <= 6
    first = search["points"][0]  # the softmax start is the first merge evaluated
    assert first["weights"] == pytest.approx(data["softmax_weights"])
    assert (first["loss"], first["keep_loss"]) == pytest.approx((search["start_loss"], search["start_keep_loss"]))
    assert all(p["allowed"] == (p["keep_loss"] <= search["objective"]["keep_limit"]) for p in search["points"])
    limit = min(data["keep_losses"]) + 0.05  # the default tolerance
    assert search["objective"] == {"mode": "tolerance", "keep_limit": pytest.approx(limit), "keep_weight": None}
    assert data["keep_tolerance"] == 0.05 and data["keep_examples"] == 4 and data["keep_source"] == str(keep)
    assert_png(plot)
    assert [p.name for p in tmp_path.glob("*.png")] == ["frontier.png"]


def test_trade_off_weight_minimises_loss_plus_weighted_keep_loss(base_and_tuned):
    base, tuned, target, keep = base_and_tuned
    result = few_shot_losses([tuned, base], str(target), keep=str(keep), keep_weight=3.0, search=True,
                             search_budget=5, holdout=2)
    search = result.search
    # 2 of 6 target examples held out: the 4 keep examples are split in the same proportion (1 of 4)
    assert (search.fit_examples, search.holdout_examples) == (4, 2)
    assert (search.keep_examples, search.keep_holdout_examples, result.keep_examples) == (3, 1, 4)
    assert len(result.keep_holdout_losses) == 2 and search.keep_holdout_loss is not None
    assert search.objective == {"mode": "trade-off", "keep_limit": None, "keep_weight": 3.0}
    answer = search.loss + 3.0 * search.keep_loss
    candidates = [p["loss"] + 3.0 * p["keep_loss"] for p in search.points]
    inputs = [t + 3.0 * k for t, k in zip(result.losses, result.keep_losses)]
    assert answer == pytest.approx(min(candidates + inputs), abs=1e-9)
    assert result.keep_tolerance is None


def test_inputs_held_in_memory_merge_exactly_as_when_read_from_the_files(base_and_tuned):
    from cocktail.merging.methods import get_method
    from cocktail.modeling.skeleton import Skeleton

    base, tuned, target, keep = base_and_tuned
    with open_path(tuned) as a, open_path(base) as b:
        plan = build_plan([a, b], dtype=torch.float32)
        streamed = Skeleton(plan, "encoder", torch.device("cpu"))
        held = Skeleton(plan, "encoder", torch.device("cpu"))
        assert not held.keep_inputs(limit_bytes=1000)  # too large for the limit: read from the files
        assert held.keep_inputs()
        for skeleton in (streamed, held):
            skeleton.fill_from_merge(get_method("linear"), [0.3, 0.7])
        left, right = streamed.model.state_dict(), held.model.state_dict()
        assert all(torch.equal(left[k], right[k]) for k in left)


# -- bad input -------------------------------------------------------------------------------------


def test_bad_keep_and_search_space_options_are_refused_before_any_model_is_read(base_and_tuned, tmp_path):
    base, tuned, target, keep = base_and_tuned
    models = [str(tuned), str(base)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "x", "pos": ["y"], "neg": []}\n{"query": 3}\n')
    for kwargs, message in [
        (dict(keep_tolerance=0.1), "keep_tolerance= needs keep="),
        (dict(keep=str(keep), keep_tolerance=0.1, keep_weight=1.0), "not both"),
        (dict(keep=str(keep), keep_tolerance=-1.0), "keep-tolerance must be at least 0"),
        (dict(search=True, search_space="layers:0"), "'models' or 'layers:K'"),
        (dict(search=True, search_space="groups"), "'models' or 'layers:K'"),
        (dict(search_space="layers:2"), "needs search=True"),
        (dict(keep=str(bad)), "bad.jsonl line 2: field 'query' must be a string"),
        (dict(keep=str(tmp_path / "none.jsonl")), "examples file not found"),
    ]:
        with pytest.raises(InputError, match=message.replace("(", r"\(")):
            few_shot_losses(models, str(target), **kwargs)
    with pytest.raises(InputError, match=r"layers:3 asks for more groups than the model has layers \(2\)"):
        few_shot_losses(models, str(target), search=True, search_space="layers:3", search_budget=2)


def test_keep_options_need_keep_and_the_search_space_needs_search():
    import click

    from cocktail.cli.options import weights_from_options

    for given, message in [({"keep_tolerance": 0.1}, "--keep-tolerance needs --keep"),
                           ({"keep_weight": 1.0}, "--keep-weight needs --keep"),
                           ({"search_space": "layers:2"}, "--search-space needs --search")]:
        with pytest.raises(click.UsageError, match=message):
            weights_from_options({"examples": "few.jsonl", **given})
    assert weights_from_options({"examples": "f", "keep": "k", "keep_tolerance": 0.0, "search": True,
                                 "search_space": "layers:3"}) == {
        "examples": "f", "keep": "k", "keep_tolerance": 0.0, "search": True, "search_space": "layers:3"}


@pytest.mark.parametrize("args, message", [
    (["--keep-tolerance", "0.1"], "--keep-tolerance needs --keep"),
    (["--keep", "KEEP", "--plot", "f.png"], "--plot needs --search and --keep"),
])
def test_cli_refuses_bad_keep_options_in_one_line(base_and_tuned, tmp_path, args, message):
    base, tuned, target, keep = base_and_tuned
    args = [str(keep) if a == "KEEP" else a for a in args]
    out = run_cli("weights", "--models", tuned, base, "--examples", target, *args, cwd=tmp_path)
    assert out.returncode == 2, out
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_recipe_keys_are_checked_and_the_keep_path_is_relative_to_the_recipe(base_and_tuned, tmp_path):
    base, tuned, target, keep = base_and_tuned
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "keep.jsonl").write_text(keep.read_text())
    good = (f"models: [{tuned}, {base}]\noutput: out\nweights_from:\n  examples: {target}\n  keep: keep.jsonl\n"
            "  keep_tolerance: 0.1\n  search: true\n  search_space: layers:2\n")
    (tmp_path / "sub" / "r.yaml").write_text(good)
    recipe = cocktail.Recipe.from_yaml(tmp_path / "sub" / "r.yaml")
    assert recipe.weights_from["keep"] == str(tmp_path / "sub" / "keep.jsonl")
    for line, message in [("  keep_tolerance: lots\n", "weights_from.keep_tolerance"),
                          ("  search_space: layers:x\n", "weights_from.search_space"),
                          ("  keep: missing.jsonl\n", "keep file not found")]:
        key = line.split(":")[0]
        text = "".join(row if not row.startswith(key + ":") else line for row in good.splitlines(True))
        (tmp_path / "sub" / "bad.yaml").write_text(text)
        with pytest.raises(InputError, match=message):
            cocktail.Recipe.from_yaml(tmp_path / "sub" / "bad.yaml")


def test_a_tolerance_that_lets_in_every_input_is_called_out(base_and_tuned):
    base, tuned, target, keep = base_and_tuned
    common = dict(examples=str(target), keep=str(keep), search=True, search_budget=2, holdout=0)
    first = few_shot_losses([tuned, base], **common, keep_tolerance=0.0)
    spread = max(first.keep_losses) - min(first.keep_losses)
    assert spread > 0 and not any("lets in every input" in n for n in first.notes)
    loose = few_shot_losses([tuned, base], **common, keep_tolerance=2 * spread)
    note = next(n for n in loose.notes if "lets in every input" in n)
    assert f"a keep_tolerance= below {spread:.2g}" in note
    tight = few_shot_losses([tuned, base], **common, keep_tolerance=spread / 2)
    assert not any("lets in every input" in n for n in tight.notes)
    traded = few_shot_losses([tuned, base], **common, keep_weight=1.0)  # no tolerance: nothing to call loose
    assert not any("lets in every input" in n for n in traded.notes)
