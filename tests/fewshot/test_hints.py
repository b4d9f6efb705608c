"""Few-shot weights that are computed right but mean little are called out: near-uniform weights
(the temperature flattened the losses) and a search checked on too few held-out examples."""

import json

from conftest import make_bert, run_cli

from cocktail.fewshot.hints import near_uniform_note
from cocktail.fewshot.weighting import few_shot_losses

EXAMPLES = [{"query": f"red cat {i}", "pos": [f"the cat is red {i}"], "neg": ["the dog is blue", "sun moon star"]}
            for i in range(12)]


def test_the_issue_example_is_called_near_uniform_with_a_temperature_that_would_decide():
    note = near_uniform_note([0.463, 0.475, 0.460], [0.334, 0.333, 0.334], 5.0)
    assert "nearly uniform (0.334, 0.333, 0.334)" in note and "temperature 5" in note
    assert "a lower temperature= (e.g. 0.005)" in note and "search=True" in note
    assert near_uniform_note([0.1, 0.9], [0.6, 0.4], 5.0) is None


def test_cocktail_weights_says_so_and_a_lower_temperature_silences_it(tmp_path):
    a, b = make_bert(tmp_path / "a", seed=1), make_bert(tmp_path / "b", seed=2)
    examples = tmp_path / "few.jsonl"
    examples.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES[:4]))
    res = run_cli("weights", "--models", a, b, "--examples", examples, "-q")
    assert res.returncode == 0, res
    assert "nearly uniform" in res.stdout and "a lower --temperature" in res.stdout and "--search" in res.stdout
    res = run_cli("weights", "--models", a, b, "--examples", examples, "--temperature", "1e-6", "--json")
    data = json.loads(res.stdout)
    assert max(data["weights"]) > 0.99 and not any("nearly uniform" in n for n in data["notes"])


def test_a_search_checked_on_two_held_out_examples_warns(tmp_path):
    a, b = make_bert(tmp_path / "a", seed=1), make_bert(tmp_path / "b", seed=2)
    result = few_shot_losses([a, b], EXAMPLES[:10], search=True, search_budget=3)  # the default holdout: 2
    assert result.search.holdout_examples == 2
    assert any("only 2 examples kept aside to check the search: too few to trust" in n for n in result.notes)
    result = few_shot_losses([a, b], EXAMPLES, search=True, search_budget=3, holdout=6)
    assert not any("kept aside" in n for n in result.notes)


def test_the_benchmark_keep_losses_at_the_default_tolerance_are_called_loose():
    from cocktail.fewshot.hints import loose_tolerance_note

    note = loose_tolerance_note([0.2541, 0.2284], 0.05)  # quality_frontier's graded keep set: fine-tune, base
    assert "lets in every input's keep loss (0.2284 to 0.2541)" in note and "below 0.026 (e.g. 0.0064)" in note
    assert loose_tolerance_note([0.2541, 0.2284], 0.01) is None
    assert loose_tolerance_note([0.3, 0.3], 0.05) is None and loose_tolerance_note([0.3], 0.05) is None
