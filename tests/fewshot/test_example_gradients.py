"""Fisher statistics keep a bounded graph: the tensors autograd saves for backward passes, alive at
once, stay within the graph budget (the whole in-batch group's graph does not), the estimate of a
graph's bytes is an upper bound of what autograd saves, and a Fisher run that will not fit is refused
before loading. The values themselves are checked against the definition in ``test_statistics.py``."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import bert_config, make_bert, make_decoder, run_cli

from cocktail.fewshot import statistics
from cocktail.fewshot.examples import load_examples
from cocktail.io.adapters import open_path
from cocktail.merging.plan import build_plan
from cocktail.modeling import footprint
from cocktail.recipe.weights_from import FewShotOptions

LONG = " ".join(["gene brain cell water air fire earth sun moon"] * 4)  # ~40 tokens
EXAMPLES = [
    {"query": "the cat", "pos": [LONG], "neg": [LONG + " sea", LONG + " dog"]},
    {"query": "protein cell gene", "pos": [LONG + " cat"], "neg": [LONG + " tree", "a dog"]},
]


class SavedTensors:
    """The bytes of the tensors autograd saves for backward passes (the graph), alive at once: their
    storages are counted once each, the model's parameters not at all (they are saved by reference)."""

    def __init__(self, model_parameters):
        self.parameters = {p.untyped_storage().data_ptr() for p in model_parameters}
        self.alive: dict[int, list] = {}  # storage -> [bytes, references]
        self.now = self.peak = 0

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.parameters:
            return tensor
        entry = self.alive.setdefault(key, [storage.nbytes(), 0])
        if entry[1] == 0:
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        return _Held(tensor, self, key)

    @staticmethod
    def unpack(held):
        return held.tensor if isinstance(held, _Held) else held

    def release(self, key):
        entry = self.alive[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.alive[key]


class _Held:
    def __init__(self, tensor, counter, key):
        self.tensor, self.counter, self.key = tensor, counter, key

    def __del__(self):
        self.counter.release(self.key)


def fisher_graph_peak(path, monkeypatch, budget):
    """The most graph bytes alive at once while cocktail computes the Fisher of the model at ``path``."""
    monkeypatch.setattr(statistics, "GRAPH_BUDGET", budget)
    monkeypatch.setenv("COCKTAIL_CACHE_DIR", "")  # computed every time, not read from the cache
    peaks = []

    def measured(model, prepared, names):
        saved = SavedTensors(model.parameters())
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            result = statistics.fisher_statistics(model, prepared, names)
        peaks.append(saved.peak)
        return result

    monkeypatch.setitem(statistics.COLLECTORS, "fisher", measured)
    with open_path(str(path)) as checkpoint:
        plan = build_plan([checkpoint])
        found = statistics.statistics_for_plan(plan, "encoder", "fisher", FewShotOptions(examples=EXAMPLES),
                                               ["target"], {"target": load_examples(EXAMPLES, "encoder")})
        found.close()
    return peaks[0]


def test_the_graph_kept_at_once_stays_within_the_budget(tmp_path, monkeypatch):
    path = make_bert(tmp_path / "m", seed=1, max_position_embeddings=128)
    config = bert_config(max_position_embeddings=128).to_dict()
    budget = footprint.graph_bytes(config, "encoder", 2, 48)  # two of the longest texts (at most 48 tokens)
    whole_group = fisher_graph_peak(path, monkeypatch, budget=1 << 40)
    assert whole_group > 2 * budget  # one graph for the group's ten texts: what the budget is there to bound
    bounded = fisher_graph_peak(path, monkeypatch, budget=budget)
    assert 0 < bounded <= budget


def saved_bytes(model, **inputs) -> int:
    saved = SavedTensors(model.parameters())
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        output = model(**inputs)
    del output
    return saved.peak


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("rows, longest", [(1, 8), (1, 60), (4, 60)])
def test_the_graph_estimate_is_an_upper_bound_of_what_autograd_saves(tmp_path, kind, attention, rows, longest):
    import transformers

    if kind == "encoder":
        path = make_bert(tmp_path / "m", seed=1, max_position_embeddings=128, tokenizer=False)
        model = transformers.AutoModel.from_pretrained(str(path), attn_implementation=attention)
    else:
        path = make_decoder(tmp_path / "m", seed=1, tokenizer=False)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=attention)
    config = json.loads((path / "config.json").read_text())
    ids = torch.randint(4, 30, (rows, longest))
    actual = saved_bytes(model.eval(), input_ids=ids, attention_mask=torch.ones_like(ids))
    estimate = footprint.graph_bytes(config, kind, rows, longest)
    assert actual <= estimate <= 3 * actual


def test_a_fisher_merge_that_will_not_fit_is_refused_before_loading(tmp_path, monkeypatch):
    for i in (1, 2):
        make_bert(tmp_path / f"m{i}", seed=i)
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n")
    monkeypatch.setattr(footprint, "free_bytes", lambda device: (1 << 20, "available on this machine (MemAvailable)"))
    args = ("merge", "--models", "m1", "m2", "--examples", "t.jsonl", "-q")
    refused = run_cli(*args, "--method", "fisher", "--output", "fisher", cwd=tmp_path)
    assert refused.returncode == 2, refused
    assert refused.line.startswith("error: m1") and "Fisher statistics need about" in refused.line
    assert "more than the 1.0 MB available on this machine" in refused.line
    assert "--method regmean" in refused.line and "a lower --max-length" in refused.line
    assert not (tmp_path / "fisher").exists()
    fits = run_cli(*args, "--method", "regmean", "--output", "regmean", cwd=tmp_path)  # one forward pass: it fits
    assert fits.returncode == 0, fits


def test_an_embedding_tables_gradients_and_sums_hold_only_the_rows_of_the_examples_tokens(tmp_path, monkeypatch):
    """A dense gradient or sum of bge-m3's 250k x 1024 table would be 1 GB each."""
    path = make_bert(tmp_path / "m", seed=1, max_position_embeddings=128)
    seen = {}
    add = statistics.SquareSum.add

    def recording(self, grad):
        add(self, grad)
        seen.setdefault(tuple(grad.shape), set()).add((grad.is_sparse, self.total.is_sparse))

    monkeypatch.setattr(statistics.SquareSum, "add", recording)
    fisher_graph_peak(path, monkeypatch, budget=1 << 40)
    config = bert_config(max_position_embeddings=128)
    tables = [(config.vocab_size, config.hidden_size), (128, config.hidden_size), (2, config.hidden_size)]
    assert [seen.pop(shape) for shape in tables] == [{(True, True)}] * 3  # words, positions, token types
    assert seen and all(kinds == {(False, False)} for kinds in seen.values())  # every other one dense


@pytest.mark.parametrize("method", ["regmean", "fisher"])
def test_the_statistics_of_a_data_aware_merge_keep_to_max_memory(tmp_path, method):
    for i in (1, 2):
        make_bert(tmp_path / f"m{i}", seed=i)
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n")
    result = run_cli("merge", "--models", "m1", "m2", "--examples", "t.jsonl", "--method", method, "--max-memory",
                     "cpu=100KiB", "--output", "out", "-q", cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.line.startswith("error: m1") and "more than the 102.4 kB allowed on cpu by --max-memory" in result.line
    assert not (tmp_path / "out").exists()


def test_a_square_sum_takes_sparse_and_dense_gradients_in_any_order():
    gen = torch.Generator().manual_seed(0)
    table = torch.zeros(6, 3)
    dense = [torch.randn(6, 3, generator=gen) for _ in range(2)]
    rows = torch.tensor([[4, 1, 4]])  # row 4 twice: its contributions are summed before squaring
    sparse = [torch.sparse_coo_tensor(rows, torch.randn(3, 3, generator=gen), (6, 3), check_invariants=True)
              for _ in range(3)]
    order = [sparse[0], sparse[1], dense[0], sparse[2], dense[1]]
    total = statistics.SquareSum(table)
    for grad in order:
        total.add(grad)
    expected = sum(g.to_dense() ** 2 for g in order) / 5
    assert torch.allclose(total.take_mean(5), expected, rtol=1e-6, atol=0)
    assert torch.equal(statistics.SquareSum(table).take_mean(5), torch.zeros(6, 3))  # no gradient: a Fisher of zeros
