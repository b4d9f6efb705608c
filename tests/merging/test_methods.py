"""The mathematics of each merge method on small tensors, against direct computations.

Expected values are computed here, element by element or with plain formulas, not with the
functions under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from cocktail.errors import InputError
from cocktail.merging.methods import METHODS, get_method, keep_count
from cocktail.merging.schedules import Schedule, TensorName, interpolate, layer_count, layer_index
from cocktail.merging.tensor_settings import check_method_use, tensor_generator


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def three():
    base = rand(4, 5, seed=0)
    return base, [base + rand(4, 5, seed=i) for i in (1, 2, 3)]


# --- linear and task arithmetic ------------------------------------------------------------------

def test_linear_is_the_weighted_sum(three):
    _, models = three
    out = get_method("linear")(models, [0.2, 0.3, 0.5])
    assert torch.allclose(out, 0.2 * models[0] + 0.3 * models[1] + 0.5 * models[2], atol=1e-6)


def test_task_arithmetic_lambda_zero_gives_the_base(three):
    base, models = three
    out = get_method("task_arithmetic")(models, [0.2, 0.3, 0.5], base, **{"lambda": 0.0})
    assert torch.equal(out, base)


def test_task_arithmetic_matches_its_formula(three):
    base, models = three
    weights, lam = [0.2, 0.3, 0.5], 1.7
    expected = base + lam * sum(w * (m - base) for w, m in zip(weights, models))
    out = get_method("task_arithmetic")(models, weights, base, **{"lambda": lam})
    assert torch.allclose(out, expected, atol=1e-5)


def test_task_arithmetic_with_default_lambda_and_weights_summing_to_one_is_linear(three):
    base, models = three
    weights = [0.2, 0.3, 0.5]
    out = get_method("task_arithmetic")(models, weights, base)
    assert torch.allclose(out, get_method("linear")(models, weights), atol=1e-5)


def test_methods_do_not_modify_their_inputs(three):
    base, models = three
    copies = [m.clone() for m in models], base.clone()
    for name, method in METHODS.items():
        tensors = models[:method.max_models] if method.max_models else models
        weights = [1 / len(tensors)] * len(tensors)
        extra = {"generator": gen(0)} if method.random else {}
        extra.update({k: 0.5 for k, v in method.defaults.items() if v is None})  # required parameters
        method(tensors, weights, base if method.needs_base else None, **extra)
        assert all(torch.equal(a, b) for a, b in zip(models, copies[0])), name
        assert torch.equal(base, copies[1]), name


# --- TIES --------------------------------------------------------------------------------------------

def test_ties_density_one_agreeing_signs_is_weighted_mean_of_deltas():
    base = rand(6, 7, seed=10)
    sign = torch.where(rand(6, 7, seed=11) > 0, 1.0, -1.0)
    deltas = [sign * (rand(6, 7, seed=s).abs() + 0.01) for s in (12, 13, 14)]
    models = [base + d for d in deltas]
    weights, lam = [0.5, 0.3, 0.2], 0.8
    out = get_method("ties")(models, weights, base, density=1.0, **{"lambda": lam})
    expected = base + lam * sum(w * d for w, d in zip(weights, deltas)) / sum(weights)
    assert torch.allclose(out, expected, atol=1e-5)
    # and, with weights summing to 1, that is task arithmetic
    ta = get_method("task_arithmetic")(models, weights, base, **{"lambda": lam})
    assert torch.allclose(out, ta, atol=1e-5)


def _ties_by_hand(base: list, models: list[list], weights: list, density: float, lam: float) -> list:
    """TIES on flat Python lists, element by element."""
    n = len(base)
    k = math.ceil(density * n - 1e-9)
    trimmed = []
    for model in models:
        delta = [m - b for m, b in zip(model, base)]
        order = sorted(range(n), key=lambda i: -abs(delta[i]))
        keep = set(order[:k])
        trimmed.append([delta[i] if i in keep else 0.0 for i in range(n)])
    out = []
    for i in range(n):
        total = sum(w * d[i] for w, d in zip(weights, trimmed))
        sign = (total > 0) - (total < 0)
        agree = [(w, d[i]) for w, d in zip(weights, trimmed) if d[i] != 0 and ((d[i] > 0) - (d[i] < 0)) == sign]
        merged = sum(w * v for w, v in agree) / sum(w for w, _ in agree) if agree else 0.0
        out.append(base[i] + lam * merged)
    return out


@pytest.mark.parametrize("density", [0.3, 0.5, 1.0])
def test_ties_trims_elects_and_averages_like_the_paper(density):
    base = rand(20, seed=20)
    models = [base + rand(20, seed=s) for s in (21, 22, 23)]
    weights, lam = [0.5, 0.25, 0.25], 1.3
    out = get_method("ties")(models, weights, base, density=density, **{"lambda": lam})
    expected = _ties_by_hand(base.tolist(), [m.tolist() for m in models], weights, density, lam)
    assert torch.allclose(out, torch.tensor(expected), atol=1e-5)


def test_ties_keeps_the_top_density_fraction_of_each_delta():
    base = torch.zeros(10)
    delta = torch.tensor([5.0, -9.0, 1.0, 0.5, -3.0, 8.0, -0.1, 2.0, 7.0, -6.0])
    out = get_method("ties")([base + delta], [1.0], base, density=0.3)
    assert out.tolist() == [0.0, -9.0, 0.0, 0.0, 0.0, 8.0, 0.0, 0.0, 7.0, 0.0]
    assert keep_count(10, 0.3) == 3 and keep_count(10, 1.0) == 10 and keep_count(3, 0.01) == 1


def test_ties_where_signs_cancel_is_the_base():
    base = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0])  # exact in float32, so the deltas cancel exactly
    delta = torch.tensor([0.25, -1.5, 2.0, 0.125, -0.75])
    out = get_method("ties")([base + delta, base - delta], [0.5, 0.5], base, density=1.0)
    assert torch.allclose(out, base)


# --- DARE --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_with_the_same_seed_repeats(three, name):
    base, models = three
    method = get_method(name)
    first = method(models, [0.2, 0.3, 0.5], base, density=0.5, generator=gen(7))
    again = method(models, [0.2, 0.3, 0.5], base, density=0.5, generator=gen(7))
    other = method(models, [0.2, 0.3, 0.5], base, density=0.5, generator=gen(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_dare_keeps_or_drops_and_rescales_each_entry():
    base = rand(50, 40, seed=40)
    delta = rand(50, 40, seed=41)
    density = 0.25
    out = get_method("dare_linear")([base + delta], [1.0], base, density=density, generator=gen(1))
    change = out - base
    kept = change.abs() > 1e-6
    assert torch.allclose(change[kept], delta[kept] / density, atol=1e-4)
    assert torch.all(change[~kept].abs() <= 1e-6)
    assert abs(kept.float().mean().item() - density) < 0.03  # 2000 entries: 3 standard deviations ~ 0.029


def test_dare_expected_value_is_the_undropped_delta():
    base = rand(8, seed=50)
    models = [base + rand(8, seed=51), base + rand(8, seed=52)]
    weights, density, draws = [0.6, 0.4], 0.5, 4000
    total = torch.zeros(8, dtype=torch.float64)
    for seed in range(draws):
        total += get_method("dare_linear")(models, weights, base, density=density, generator=gen(seed)).double()
    mean = (total / draws).float()
    expected = base + sum(w * (m - base) for w, m in zip(weights, models))
    # each entry's spread is sqrt(sum w^2 d^2 (1-p)/p); over 4000 draws the mean is within 5 standard errors
    spread = torch.sqrt(sum((w * (m - base)) ** 2 for w, m in zip(weights, models)) * (1 - density) / density)
    assert torch.all((mean - expected).abs() <= 5 * spread / math.sqrt(draws) + 1e-6)


def test_dare_with_density_one_is_task_arithmetic_and_ties(three):
    base, models = three
    weights = [0.2, 0.3, 0.5]
    ta = get_method("task_arithmetic")(models, weights, base)
    assert torch.allclose(get_method("dare_linear")(models, weights, base, density=1.0, generator=gen(0)), ta)
    ties = get_method("ties")(models, weights, base, density=1.0)
    assert torch.allclose(get_method("dare_ties")(models, weights, base, density=1.0, generator=gen(0)), ties)


# --- SLERP -------------------------------------------------------------------------------------------

def test_slerp_endpoints_are_the_models():
    a, b = rand(3, 4, seed=60), rand(3, 4, seed=61)
    slerp = get_method("slerp")
    assert torch.allclose(slerp([a, b], [], t=0.0), a, atol=1e-6)
    assert torch.allclose(slerp([a, b], [], t=1.0), b, atol=1e-6)


def test_slerp_of_orthogonal_unit_vectors_follows_the_circle():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    for t in (0.1, 0.5, 0.8):
        out = get_method("slerp")([a, b], [], t=t)
        assert torch.allclose(out, torch.tensor([math.cos(t * math.pi / 2), math.sin(t * math.pi / 2)]), atol=1e-6)


def test_slerp_keeps_the_norm_between_orthogonal_inputs():
    a = torch.tensor([3.0, 0.0, 0.0, 0.0])
    b = torch.tensor([0.0, 0.0, 5.0, 0.0])
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        norm = get_method("slerp")([a, b], [], t=t).norm().item()
        assert 3.0 - 1e-5 <= norm <= 5.0 + 1e-5
    # linear interpolation would shrink it: at t=0.5, |(a+b)/2| = 2.92 < 3
    assert ((a + b) / 2).norm().item() < 3.0


def test_slerp_of_parallel_tensors_is_linear():
    a = rand(10, seed=62)
    out = get_method("slerp")([a, 2 * a], [], t=0.3)
    assert torch.allclose(out, 0.7 * a + 0.3 * 2 * a, atol=1e-6)
    zero = torch.zeros(10)
    assert torch.allclose(get_method("slerp")([zero, a], [], t=0.4), 0.4 * a, atol=1e-6)


# --- Model Stock -------------------------------------------------------------------------------------

def test_model_stock_of_identical_models_is_that_model():
    base = rand(6, 6, seed=70)
    model = base + rand(6, 6, seed=71)
    out = get_method("model_stock")([model.clone(), model.clone(), model.clone()], [], base)
    assert torch.allclose(out, model, atol=1e-5)


def test_model_stock_matches_its_formula():
    base = rand(30, seed=72)
    shared = rand(30, seed=73)
    models = [base + shared + 0.8 * rand(30, seed=s) for s in (74, 75, 76)]
    d = [(m - base).double() for m in models]
    cosines = [float(d[i] @ d[j] / (d[i].norm() * d[j].norm())) for i in range(3) for j in range(i + 1, 3)]
    cos = sum(cosines) / 3
    t = 3 * cos / (1 + 2 * cos)
    expected = t * (models[0] + models[1] + models[2]) / 3 + (1 - t) * base
    out = get_method("model_stock")(models, [], base)
    assert 0 < t < 1
    assert torch.allclose(out, expected, atol=1e-5)


def test_model_stock_of_opposed_models_stays_at_the_base():
    base = rand(9, seed=77)
    delta = rand(9, seed=78)
    out = get_method("model_stock")([base + delta, base - delta], [], base)
    assert torch.allclose(out, base, atol=1e-6)


# --- what a method needs -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["task_arithmetic", "ties", "dare_linear", "dare_ties", "model_stock"])
def test_methods_that_need_a_base_refuse_to_run_without_one(name):
    with pytest.raises(InputError, match=f"merge method {name} needs a base model"):
        check_method_use(get_method(name), [None, None], None, {})


@pytest.mark.parametrize("count", [1, 3])
def test_slerp_needs_exactly_two_models(count):
    with pytest.raises(InputError, match=f"slerp merges exactly 2 models, got {count}"):
        check_method_use(get_method("slerp"), [None] * count, None, {})


@pytest.mark.parametrize("name", ["slerp", "model_stock"])
def test_methods_without_weights_refuse_weights(name):
    with pytest.raises(InputError, match=rf"{name} takes no weights, but weights= is given"):
        check_method_use(get_method(name), [0.5, 0.5], "base" if name == "model_stock" else None, {})


@pytest.mark.parametrize("door, says", [
    ("cli", "merge method slerp takes no weights, but --weights is given: its parameter t sets the mix "
            "(--param t=0.3)"),
    ("recipe", "merge method slerp takes no weights, but models[1].weight is given: its parameter t sets the mix "
               "(parameters: {t: 0.3})"),
    ("python", "merge method slerp takes no weights, but weights= is given: its parameter t sets the mix "
               "(parameters={'t': 0.3})"),
])
def test_the_slerp_weights_error_speaks_the_users_language(door, says):
    from cocktail.errors import DOOR

    token = DOOR.set(door)
    try:
        with pytest.raises(InputError) as raised:
            check_method_use(get_method("slerp"), [None, 0.5], None, {})
    finally:
        DOOR.reset(token)
    assert str(raised.value) == says


def test_unknown_parameter_is_refused_with_the_accepted_ones():
    with pytest.raises(InputError, match=r"ties has no parameter 'densty'; did you mean 'density'\? \(its parameters: lambda, normalize, "
                                          r"density, rounding, rescale, zero_sign\)"):
        check_method_use(get_method("ties"), [None, None], "base", {"densty": 0.5})
    with pytest.raises(InputError, match="linear has no parameter 't'; .it takes none"):
        check_method_use(get_method("linear"), [None, None], None, {"t": 0.5})


# --- per-tensor values -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, layer", [
    ("encoder.layer.3.attention.self.query.weight", 3), ("bert.encoder.layer.11.output.dense.bias", 11),
    ("model.layers.7.mlp.up_proj.weight", 7), ("transformer.h.2.attn.c_attn.weight", 2), ("h.0.ln_1.weight", 0),
    ("embeddings.word_embeddings.weight", None), ("pooler.dense.weight", None), ("lm_head.weight", None),
])
def test_layer_index_from_tensor_names(name, layer):
    assert layer_index(name) == layer


def test_layer_count():
    assert layer_count(["embeddings.x", "encoder.layer.0.a", "encoder.layer.5.b", "pooler.w"]) == 6
    assert layer_count(["embeddings.x"]) == 0


def test_gradient_interpolates_from_first_to_last_layer():
    assert [interpolate([0.2, 0.5, 0.8], i, 3) for i in range(3)] == pytest.approx([0.2, 0.5, 0.8])
    assert [interpolate([0.0, 1.0], i, 5) for i in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert [interpolate([0.0, 1.0, 0.0], i, 5) for i in range(5)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    assert interpolate([0.3, 0.9], None, 12) == 0.3  # embeddings, pooler: the first layer's value
    assert interpolate([0.3, 0.9], 0, 1) == 0.3


def test_filter_entries_first_match_wins_and_default_applies_otherwise():
    schedule = Schedule.parse([{"filter": "embeddings", "value": 1.0}, {"filter": "layer\\.1\\.", "value": [0.1, 0.9]},
                               {"filter": "embeddings\\.word", "value": 0.0}, {"value": 0.5}], "models[0].weight")
    def value(name):
        return schedule.lookup(TensorName.of(name), layers=2)
    assert value("embeddings.word_embeddings.weight") == (0, 1.0)
    assert value("encoder.layer.1.output.dense.weight") == (1, 0.9)
    assert value("encoder.layer.0.output.dense.weight") == (3, 0.5)
    assert value("pooler.dense.weight") == (3, 0.5)
    # the name with or without the model prefix matches
    assert Schedule.parse([{"filter": "^bert\\.pooler", "value": 2.0}], "k").lookup(
        TensorName.of("bert.pooler.dense.weight", "pooler.dense.weight"), 2) == (0, 2.0)
    assert Schedule.parse([{"filter": "^pooler", "value": 2.0}], "k").lookup(TensorName.of("x.y"), 2) is None


@pytest.mark.parametrize("spec, message", [
    ([{"filter": "enc(", "value": 1}], r"models\[1\]\.weight\[0\]\.filter 'enc\(' is not a valid regular expression"),
    ([{"value": 1}, {"filter": "x", "value": 2}], r"models\[1\]\.weight\[1\] comes after the default entry"),
    ([{"filter": "x"}], r"models\[1\]\.weight\[0\] has no value"),
    ([{"filter": "x", "vale": 1}], r"models\[1\]\.weight\[0\] has unknown key 'vale'"),
    ([{"filter": "x", "value": "high"}], r"models\[1\]\.weight\[0\]\.value must be a number or a list of numbers"),
    ("half", r"models\[1\]\.weight must be a number, a list of numbers"),
    ([], r"models\[1\]\.weight must be a number, a list of numbers"),
    ([0.1, float("nan")], r"models\[1\]\.weight must be finite"),
])
def test_bad_schedules_are_refused_naming_the_key(spec, message):
    with pytest.raises(InputError, match=message):
        Schedule.parse(spec, "models[1].weight")


def test_tensor_generator_depends_on_seed_and_name_only():
    def draw(seed, name):
        return torch.rand(5, generator=tensor_generator(seed, "transformer", name))
    first = draw(0, "encoder.layer.0.attention.self.query.weight")
    draw(0, "embeddings.word_embeddings.weight")  # another tensor in between changes nothing
    assert torch.equal(first, draw(0, "encoder.layer.0.attention.self.query.weight"))
    assert not torch.equal(first, draw(1, "encoder.layer.0.attention.self.query.weight"))
    assert not torch.equal(first, draw(0, "encoder.layer.1.attention.self.query.weight"))


# --- the command line's view of methods ----------------------------------------------------------------

def test_merge_help_names_every_method():
    from click.testing import CliRunner

    from cocktail.cli import cli

    text = " ".join(CliRunner().invoke(cli, ["merge", "--help"]).output.split())
    for name in METHODS:
        assert name in text, name


@pytest.mark.parametrize("text, expected", [
    ("density=0.5", ("density", 0.5)), ("lambda=2", ("lambda", 2)), ("lambda=-1e-1", ("lambda", -0.1)),
    ("t=0,0.5,1", ("t", [0.0, 0.5, 1.0])),
    ('density=[{"filter": "embeddings", "value": 1}, {"value": 0.5}]',
     ("density", [{"filter": "embeddings", "value": 1}, {"value": 0.5}])),
    ("mode=fast", ("mode", "fast")), ("normalize=false", ("normalize", False)), ("normalize=True", ("normalize", True)),
])
def test_param_values_are_parsed_as_numbers_lists_bools_or_json(text, expected):
    from cocktail.cli.options import parse_parameter

    assert parse_parameter(text) == expected
