"""bge-m3 in `cocktail eval`, `sweep` and `weights`: every mode is scored and plotted, the weights come
from the dense loss. (That each mode computes what BGEM3FlagModel computes is tests/test_flagembedding.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, assert_png, make_m3, make_xlmr, run_cli, save_xlmr_tokenizer

from cocktail.errors import InputError
from cocktail.evaluation.evaluate import evaluate_models
from cocktail.evaluation.sweep import SweepResult, plot_sweep

MODES = ("dense", "sparse", "colbert", "hybrid")
RECORDS = [{"query": "red cat", "pos": ["the cat is red"], "neg": ["the dog is blue", "one two", "sun moon"]},
           {"query": "blue sky sea", "pos": ["the sky is blue", "blue sea"], "neg": ["fire", "the cat is red"]}]


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def by_mode(rows) -> dict:
    return {(r["mode"], r["metric"]): r["value"] for r in rows}


def test_sweep_of_two_m3_scores_every_mode_and_plots_the_one_asked_for(tmp_path, data):
    a, b = make_m3(tmp_path / "m3a", seed=0), make_m3(tmp_path / "m3b", seed=1)
    plot = tmp_path / "curve.png"
    result = run_cli("sweep", "--models", a, b, "--data", data, "--steps", "2", "--json", "--plot", plot,
                     "--mode", "colbert")
    assert result.returncode == 0, result
    rows = json.loads(result.stdout)["rows"]
    assert {r["mode"] for r in rows} == set(MODES)
    for weight, model in ((1.0, a), (0.0, b)):  # the ends of the sweep are the models themselves
        alone = by_mode(evaluate_models([str(model)], [str(data)]))
        assert by_mode(r for r in rows if r["weight"] == weight) == pytest.approx(alone)
    assert_png(plot)


def test_modes_other_than_dense_need_bge_m3_heads(tmp_path):
    result = SweepResult(["a", "b"], [0.0, 1.0], [{"weight": 0.0, "data": "d", "metric": "spearman", "value": 0.1}], [])
    with pytest.raises(InputError, match="mode= sparse: these models are scored in dense only"):
        plot_sweep(result, tmp_path / "x.png", mode="sparse")


def test_an_xlmr_without_heads_is_scored_dense_only(tmp_path, data):
    plain = make_xlmr(tmp_path / "x", seed=0)
    save_xlmr_tokenizer(plain)
    rows = evaluate_models([str(plain)], [str(data)])
    assert rows and all("mode" not in r for r in rows)


def test_weights_of_m3_models_come_from_the_dense_loss(tmp_path):
    a, b = make_m3(tmp_path / "m3a", seed=0), make_m3(tmp_path / "m3b", seed=1)
    result = run_cli("weights", "--models", a, b, "--examples", REPO / "examples" / "few-shot.jsonl", "--json")
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    assert len(report["weights"]) == 2 and abs(sum(report["weights"]) - 1) < 1e-9
    assert any("the weights come from the dense loss: head file(s) colbert_linear.pt, sparse_linear.pt" in note
               for note in report["notes"])


def test_sts_pairs_are_scored_in_every_mode(tmp_path):
    a = make_m3(tmp_path / "m3a", seed=0)
    path = tmp_path / "sts.tsv"
    path.write_text("the cat is red\ta red cat\t4.5\nthe dog\tsun moon\t1\nblue sea\tthe sea is blue\t4\n"
                    "one two\tbig small tree\t0.5\n")
    rows = evaluate_models([str(a)], [str(path)])
    assert [(r["mode"], r["metric"]) for r in rows] == [(m, "spearman") for m in MODES]


def test_verify_covers_head_files(tmp_path):
    a, b = make_m3(tmp_path / "m3a", seed=0), make_m3(tmp_path / "m3b", seed=1)
    assert run_cli("merge", "--models", a, b, "-o", tmp_path / "out", "--quiet").returncode == 0
    import torch

    state = torch.load(b / "colbert_linear.pt", weights_only=True)
    state["bias"] += 1
    torch.save(state, b / "colbert_linear.pt")
    result = run_cli("run", tmp_path / "out" / "cocktail_recipe.yaml", "--output", tmp_path / "again", "--verify")
    assert result.returncode == 2 and "colbert_linear.pt" in result.stderr, result
    assert not (tmp_path / "again").exists()


def test_colbert_scores_in_blocks_equal_the_pair_by_pair_definition(monkeypatch):
    import torch

    from cocktail.modeling import m3

    monkeypatch.setattr(m3, "DOC_CHUNK", 2)  # several blocks of queries and of passages
    monkeypatch.setattr(m3, "QUERY_BLOCK", 3)
    torch.manual_seed(0)
    queries = [torch.nn.functional.normalize(torch.randn(n, 8), dim=-1) for n in (3, 1, 5, 2, 4)]
    docs = [torch.nn.functional.normalize(torch.randn(n, 8), dim=-1) for n in (4, 7, 1, 0, 3)]
    expected = torch.tensor([[(q @ d.T).max(-1).values.mean().item() if len(d) else 0.0 for d in docs]
                             for q in queries])
    torch.testing.assert_close(m3.colbert_scores(queries, docs), expected, atol=1e-6, rtol=0)
    lexical = m3.lexical_scores([{1: 0.5, 2: 2.0}, {7: 1.0}], [{2: 3.0, 9: 1.0}, {1: 1.0, 2: 1.0}, {}])
    torch.testing.assert_close(lexical, torch.tensor([[6.0, 2.5, 0.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("kept", ["colbert_linear", "sparse_linear"])
def test_half_a_bge_m3_is_scored_dense_only_and_says_so(tmp_path, data, kept):
    half = make_m3(tmp_path / "half", seed=0, heads=(kept,))
    lacking = ({"colbert_linear", "sparse_linear"} - {kept}).pop()
    result = run_cli("eval", "--models", half, "--data", data, "--json", "--quiet")
    assert result.returncode == 0, result
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"has bge-m3's {kept}.pt but not its {lacking}.pt: scored dense only" in warnings[0]
    assert all("mode" not in r for r in json.loads(result.stdout))
    whole = run_cli("eval", "--models", make_m3(tmp_path / "whole", seed=0), "--data", data, "--json", "--quiet")
    assert "warning: " not in whole.stderr and {r["mode"] for r in json.loads(whole.stdout)} == set(MODES)


def test_hybrid_weights_are_the_users_to_set(tmp_path):
    """0.4 / 0.2 / 0.4 is the model card's advice (BGEM3FlagModel.compute_score defaults to 1 / 1 / 1):
    --hybrid-weights sets them; weights 1 0 0 make hybrid the dense score, 0 1 0 the sparse one."""
    from click.testing import CliRunner

    from cocktail.cli import cli

    m3 = make_m3(tmp_path / "m3")
    sts = tmp_path / "sts.tsv"
    sts.write_text("the cat\ta cat\t4\nthe dog\tsun moon\t1\nred car\tblue sea\t2\nthe sun\tsun star\t3\n"
                   "one two\tthree\t0.5\n")
    for weights, same_as in ((["1", "0", "0"], "dense"), (["0", "1", "0"], "sparse"), (["0", "0", "2"], "colbert")):
        result = CliRunner().invoke(cli, ["eval", "-m", str(m3), "--data", str(sts), "--hybrid-weights", *weights,
                                          "--json", "--quiet"])
        assert result.exit_code == 0, result.output
        scores = by_mode(json.loads(result.stdout))
        assert scores[("hybrid", "spearman")] == pytest.approx(scores[(same_as, "spearman")]), weights
    default = by_mode(evaluate_models([str(m3)], [str(sts)]))
    assert default == by_mode(evaluate_models([str(m3)], [str(sts)], hybrid_weights=[0.4, 0.2, 0.4]))
    bad = CliRunner().invoke(cli, ["eval", "-m", str(m3), "--data", str(sts), "--hybrid-weights", "-1", "1", "1"])
    assert bad.exit_code == 2 and bad.stderr.strip().splitlines() == [
        "error: --hybrid-weights takes three weights, of dense, sparse and colbert, none negative and not all 0 "
        "(bge-m3's model card advises 0.4 0.2 0.4), got -1 1 1"]
