"""`cocktail sweep`: in-memory merges along the weight, the ends reproduce the inputs, the plot is a PNG."""

from __future__ import annotations

import json

import pytest
from conftest import assert_png, make_bert, run_cli
from test_evaluate import _write, make_beir

import cocktail
from cocktail.errors import InputError


@pytest.fixture
def sweep_inputs(tmp_path):
    a = make_bert(tmp_path / "a", seed=1)
    b = make_bert(tmp_path / "b", seed=2)
    beir = make_beir(tmp_path / "beir")
    sts = _write(tmp_path / "sts.tsv", "the cat is red\ta red cat\t4\nthe dog\tsun moon\t1\nred\tblue\t2\n"
                                       "one two three\tone two\t3.5\nfire\twater\t0.5\n")
    return a, b, beir, sts


def scores(rows, **match) -> dict:
    return {(r["data"], r["metric"]): r["value"] for r in rows if all(r[k] == v for k, v in match.items())}


def test_sweep_ends_reproduce_the_two_models(sweep_inputs, tmp_path):
    from cocktail.evaluation.evaluate import evaluate_models
    from cocktail.evaluation.sweep import plot_sweep, sweep_weights

    a, b, beir, sts = sweep_inputs
    result = sweep_weights([a, b], [str(beir), str(sts)], steps=3, query_instruction="find ")
    assert result.weights == [0.0, 0.5, 1.0]
    alone = evaluate_models([str(a), str(b)], [str(beir), str(sts)], "find ")
    for weight, model in ((1.0, str(a)), (0.0, str(b))):
        swept, direct = scores(result.rows, weight=weight), scores(alone, model=model)
        assert swept.keys() == direct.keys() and len(swept) == 5
        for key in direct:
            assert swept[key] == pytest.approx(direct[key], abs=1e-6), (weight, key)
    png = plot_sweep(result, tmp_path / "sweep.png")
    assert_png(png)
    assert [p.name for p in tmp_path.glob("*.png")] == ["sweep.png"]  # no temporary file left


def test_sweep_middle_matches_a_merge_written_to_disk(sweep_inputs, tmp_path):
    from cocktail.evaluation.evaluate import evaluate_models
    from cocktail.evaluation.sweep import sweep_weights

    a, b, beir, sts = sweep_inputs
    cocktail.merge([a, b], [0.25, 0.75], tmp_path / "merged")
    result = sweep_weights([a, b], [str(sts)], steps=5)
    assert result.weights == [0.0, 0.25, 0.5, 0.75, 1.0]
    on_disk = evaluate_models([str(tmp_path / "merged")], [str(sts)])
    assert scores(result.rows, weight=0.25)[(str(sts), "spearman")] == pytest.approx(on_disk[0]["value"], abs=1e-6)


def test_cli_sweep_table_json_and_plot(sweep_inputs, tmp_path):
    a, b, beir, sts = sweep_inputs
    plot, frontier = tmp_path / "curve.png", tmp_path / "frontier.png"
    result = run_cli("sweep", "--models", a, b, "--data", beir, sts, "--steps", "3", "--plot", plot, "--json",
                     "--frontier-plot", frontier)
    assert result.returncode == 0, result
    data = json.loads(result.stdout)
    assert data["models"] == [str(a), str(b)] and data["weights"] == [0.0, 0.5, 1.0]
    assert data["few_shot_weights"] is None
    assert {(r["weight"], r["data"], r["metric"]) for r in data["rows"]} == {
        (w, str(d), m) for w in (0.0, 0.5, 1.0)
        for d, ms in ((beir, ("ndcg@10", "mrr@10", "recall@10", "recall@100")), (sts, ("spearman",))) for m in ms}
    assert_png(plot)
    assert_png(frontier)
    (curve,) = data["frontier"]  # the target (first data set) against the general one, a point per weight
    assert (curve["target"], curve["target_metric"], curve["general"], curve["general_metric"]) == (
        str(beir), "ndcg@10", str(sts), "spearman")
    for point in curve["points"]:
        assert point["y"] == scores(data["rows"], weight=point["weight"])[(str(beir), "ndcg@10")]
        assert point["x"] == scores(data["rows"], weight=point["weight"])[(str(sts), "spearman")]
    assert [p["weight"] for p in curve["points"]] == [0.0, 0.5, 1.0]

    table = run_cli("sweep", "--models", a, b, "--data", sts, "--steps", "2", "--quiet")
    assert table.returncode == 0, table
    assert f"weight w: w * {a} + (1 - w) * {b}" in table.stdout
    assert "spearman" in table.stdout and "\n  0 " in table.stdout and "\n  1 " in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--steps", "1"], "a sweep needs at least 2 steps"),
    (["--plot", "curve.pdf"], "--plot writes a PNG"),
    (["--frontier-plot", "f.png"], "--frontier-plot needs at least 2 --data sets"),
    (["--mode", "dense"], "--mode picks the retrieval mode --plot or --frontier-plot draws"),
    (["--mode", "sparse", "--plot", "c.png"], "--mode sparse: these models are scored in dense only"),
])
def test_cli_sweep_bad_arguments(sweep_inputs, tmp_path, args, message):
    a, b, beir, sts = sweep_inputs
    result = run_cli("sweep", "--models", a, b, "--data", sts, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_sweep_needs_two_models(sweep_inputs, tmp_path):
    a, b, beir, sts = sweep_inputs
    result = run_cli("sweep", "--models", a, b, a, "--data", sts)
    assert result.returncode == 2 and "exactly 2 models, got 3" in result.stderr


def test_sweep_marks_the_few_shot_weight(sweep_inputs, tmp_path):
    from cocktail.evaluation.sweep import plot_sweep, sweep_weights

    a, b, beir, sts = sweep_inputs
    examples = _write(tmp_path / "examples.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"query": "red cat", "pos": ["the cat is red"], "neg": ["the dog is blue", "one two three"]},
        {"query": "blue dog", "pos": ["the dog is blue"], "neg": ["the cat is red", "sun moon star"]},
    ]))
    expected = cocktail.weights_from_examples([str(a), str(b)], str(examples), model_type="encoder")
    result = sweep_weights([a, b], [str(sts)], steps=3, examples=str(examples))
    assert result.few_shot_weights == pytest.approx(expected)
    assert any(abs(w - expected[0]) < 1e-9 for w in result.weights)
    assert scores(result.rows, weight=next(w for w in result.weights if abs(w - expected[0]) < 1e-9))
    assert_png(plot_sweep(result, tmp_path / "marked.png"))




def test_sweep_takes_the_few_shot_temperature(sweep_inputs, tmp_path):
    a, b, beir, sts = sweep_inputs
    examples = _write(tmp_path / "examples.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"query": "red cat", "pos": ["the cat is red"], "neg": ["the dog is blue", "one two three"]},
        {"query": "blue dog", "pos": ["the dog is blue"], "neg": ["the cat is red", "sun moon star"]},
    ]))
    res = run_cli("sweep", "--models", a, b, "--data", sts, "--steps", "2", "--examples", examples,
                  "--temperature", "1e-7", "--json")
    assert res.returncode == 0, res
    expected = cocktail.weights_from_examples([str(a), str(b)], str(examples), temperature=1e-7)
    assert json.loads(res.stdout)["few_shot_weights"] == pytest.approx(expected)
    assert max(expected) > 0.99  # at this temperature the lower loss takes (almost) all


def test_a_mode_the_models_lack_is_refused_before_anything_is_scored(sweep_inputs, tmp_path, monkeypatch):
    from cocktail.evaluation import sweep

    a, b, beir, sts = sweep_inputs
    examples = _write(tmp_path / "examples.jsonl", json.dumps(
        {"query": "red cat", "pos": ["the cat is red"], "neg": ["the dog is blue"]}) + "\n")
    for name in ("score_encoder", "few_shot_weights"):
        monkeypatch.setattr(sweep, name, lambda *a, _name=name, **k: pytest.fail(f"{_name} ran"))
    with pytest.raises(InputError, match="mode= colbert: these models are scored in dense only"):
        sweep.sweep_weights([a, b], [sts], 2, examples=examples, mode="colbert")


def test_the_frontier_plot_shows_every_word_and_tick_label_apart(tmp_path):
    """Long data set paths and metrics that differ in the fifth decimal: the title, labels and tick labels all lie inside the
    picture, and no two x tick labels touch (once the title was cut off and the ticks ran together)."""
    from cocktail.evaluation.datasets import RetrievalSet, STSSet
    from cocktail.evaluation.evaluate import Task
    from cocktail.evaluation.sweep import SweepResult, frontier_figure, plot_frontier
    from cocktail.io.figure import pyplot

    target = Task(RetrievalSet("/home/someone/projects/data/beir/scifact", {}, {}, {}))
    general = [Task(STSSet("/home/someone/projects/data/stsbenchmark/sts-test.csv", [])),
               Task(STSSet("/home/someone/projects/data/sick/SICK_test_annotated.txt", []))]
    weights = [i / 10 for i in range(11)]
    rows = []
    for w in weights:
        rows += [{"weight": w, "data": target.name, "metric": "ndcg@10", "value": 0.6 + 0.1 * w - 0.02 * w * w},
                 {"weight": w, "data": general[0].name, "metric": "spearman", "value": 0.8312345 - 3.12e-5 * w},
                 {"weight": w, "data": general[1].name, "metric": "spearman", "value": 0.7712345 - 1.2e-4 * w * w}]
    result = SweepResult(["/home/someone/models/bge-base-en-v1.5-finetuned-scifact",
                          "/home/someone/models/bge-base-en-v1.5"], weights, rows, [target, *general], [0.4])
    fig = frontier_figure(result)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        picture = fig.bbox
        texts = [fig._suptitle] + [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label)]
        for text in texts:
            box = text.get_window_extent(renderer)
            assert text.get_text() and picture.x0 <= box.x0 and box.x1 <= picture.x1 and box.y1 <= picture.y1, \
                f"{text.get_text()!r} is cut off"
        for ax in fig.axes:
            ticks = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels()
                            if t.get_text() and t.get_visible()), key=lambda b: b.x0)
            ticks = [b for b in ticks if ax.bbox.x0 - 5 <= (b.x0 + b.x1) / 2 <= ax.bbox.x1 + 5]  # the ones drawn
            assert len(ticks) >= 3
            assert not ax.xaxis.get_offset_text().get_text(), "an offset ('1e-5+8.3e-1') drawn over the x label"
            assert all(left.x1 + 4 <= right.x0 for left, right in zip(ticks, ticks[1:])), "x tick labels touch"
    finally:
        pyplot().close(fig)
    assert_png(plot_frontier(result, tmp_path / "frontier.png"))


def test_regmean_sweep_points_are_the_regmean_merges_cocktail_merge_writes(sweep_inputs, tmp_path):
    """sweep --method regmean: each point is the RegMean merge at [w, 1 - w] (the weights scaling the
    statistics: model a's on the examples, b's on the keep examples), not the linear one."""
    from cocktail.evaluation.evaluate import evaluate_models
    from cocktail.evaluation.sweep import sweep_weights

    a, b, _, sts = sweep_inputs
    target = [{"query": "the cat", "pos": ["a red cat"], "neg": ["the sea", "one two"]}]
    keep = [{"query": "fire water", "pos": ["water and fire"], "neg": ["the dog"]}]
    (tmp_path / "t.jsonl").write_text(json.dumps(target))
    (tmp_path / "k.jsonl").write_text(json.dumps(keep))
    cocktail.merge([a, b], [0.25, 0.75], tmp_path / "regmean", method="regmean", base=b,
                   examples=tmp_path / "t.jsonl", keep=tmp_path / "k.jsonl", parameters={"alpha": 0.5})
    cocktail.merge([a, b], [0.25, 0.75], tmp_path / "linear")
    result = sweep_weights([a, b], [str(sts)], steps=5, examples=tmp_path / "t.jsonl", method="regmean",
                           parameters={"alpha": 0.5}, keep=tmp_path / "k.jsonl", base=b)
    assert result.method == "regmean" and result.to_dict()["parameters"] == {"alpha": 0.5}
    on_disk = evaluate_models([str(tmp_path / "regmean"), str(tmp_path / "linear")], [str(sts)])
    swept = scores(result.rows, weight=0.25)[(str(sts), "spearman")]
    assert swept == pytest.approx(on_disk[0]["value"], abs=1e-6)
    with pytest.raises(InputError, match="needs examples"):
        sweep_weights([a, b], [str(sts)], steps=3, method="regmean")
    with pytest.raises(InputError, match="not ties"):
        sweep_weights([a, b], [str(sts)], steps=3, method="ties")
