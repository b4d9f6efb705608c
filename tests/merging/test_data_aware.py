"""RegMean and Fisher merging on small tensors, against their definitions.

The expected values come from numpy's least squares and from the formulas written out here, not
from the functions under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cocktail.merging.methods import get_method


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def layer():
    """Two models' weights of one nn.Linear (out 3, in 5) and their inputs (7 and 9 rows)."""
    weights = [rand(3, 5, seed=1), rand(3, 5, seed=2)]
    inputs = [rand(7, 5, seed=3), rand(9, 5, seed=4)]
    return weights, inputs


def gram(x: torch.Tensor) -> torch.Tensor:
    return x.T @ x


def test_regmean_with_alpha_one_is_the_least_squares_fit_to_both_models_outputs(layer):
    weights, inputs = layer
    merged = get_method("regmean")(weights, [0.5, 0.5], statistics=[gram(x) for x in inputs], alpha=1.0)
    stacked_inputs = np.vstack([x.numpy() for x in inputs])
    stacked_outputs = np.vstack([(x @ w.T).numpy() for x, w in zip(inputs, weights)])
    fit, *_ = np.linalg.lstsq(stacked_inputs, stacked_outputs, rcond=None)  # in×out
    np.testing.assert_allclose(merged.numpy(), fit.T, rtol=1e-9, atol=1e-10)


def test_regmean_weights_scale_each_models_gram_matrix(layer):
    weights, inputs = layer
    merged = get_method("regmean")(weights, [0.8, 0.2], statistics=[gram(x) for x in inputs], alpha=1.0)
    # least squares with model i's rows scaled by sqrt(w_i): Σ w_i X_iᵀ X_i in the normal equations
    scales = [0.8 ** 0.5, 0.2 ** 0.5]
    stacked_inputs = np.vstack([s * x.numpy() for s, x in zip(scales, inputs)])
    stacked_outputs = np.vstack([s * (x @ w.T).numpy() for s, x, w in zip(scales, inputs, weights)])
    fit, *_ = np.linalg.lstsq(stacked_inputs, stacked_outputs, rcond=None)
    np.testing.assert_allclose(merged.numpy(), fit.T, rtol=1e-9, atol=1e-10)


def test_regmean_alpha_scales_the_off_diagonal_entries(layer):
    weights, inputs = layer
    alpha = 0.3
    grams = [gram(x) for x in inputs]
    reduced = [alpha * g + (1 - alpha) * torch.diag(torch.diag(g)) for g in grams]
    expected = torch.linalg.solve(reduced[0] + reduced[1], reduced[0] @ weights[0].T + reduced[1] @ weights[1].T).T
    merged = get_method("regmean")(weights, [0.5, 0.5], statistics=grams, alpha=alpha)
    assert torch.allclose(merged, expected, rtol=1e-9, atol=1e-12)


def test_regmean_weight_one_on_a_model_gives_that_model(layer):
    weights, inputs = layer
    merged = get_method("regmean")(weights, [0.0, 1.0], statistics=[gram(x) for x in inputs], alpha=0.9)
    assert torch.allclose(merged, weights[1], rtol=1e-9, atol=1e-12)


def test_regmean_weight_one_gives_that_model_even_when_its_gram_is_singular():
    weights = [rand(3, 6, seed=1), rand(3, 6, seed=2)]
    few = rand(2, 6, seed=3)  # 2 input rows for 6 features: a rank-2 Gram matrix
    ridged: list = []
    merged = get_method("regmean")(weights, [1.0, 0.0], statistics=[gram(few), gram(rand(8, 6, seed=4))], alpha=1.0,
                                   ridged=ridged, name="layer")
    assert torch.equal(merged, weights[0])
    assert ridged == []  # one model left: nothing to solve, so nothing to regularise


def test_regmean_weight_one_and_equal_statistics_are_exact_to_the_bit(layer):
    weights, inputs = layer
    grams = [gram(x) for x in inputs]
    assert torch.equal(get_method("regmean")(weights, [0.0, 1.0], statistics=grams, alpha=0.9), weights[1])
    shared = [grams[0], grams[0].clone()]
    merged = get_method("regmean")(weights, [0.25, 0.75], statistics=shared, alpha=0.9)
    assert torch.equal(merged, get_method("linear")(weights, [0.25, 0.75]))


def test_regmean_of_three_models_is_the_solve_of_its_definition():
    weights = [rand(3, 5, seed=s) for s in (1, 2, 3)]
    grams = [gram(rand(9, 5, seed=s)) for s in (4, 5, 6)]
    c = [0.2, 0.3, 0.5]

    def reduced(g):
        return 0.7 * g + 0.3 * torch.diag(torch.diag(g))

    a = sum(ci * reduced(g) for ci, g in zip(c, grams))
    b = sum(ci * reduced(g) @ w.T for ci, g, w in zip(c, grams, weights))
    expected = torch.from_numpy(np.linalg.solve(a.numpy(), b.numpy())).T
    merged = get_method("regmean")(weights, c, statistics=grams, alpha=0.7)
    assert torch.allclose(merged, expected, rtol=1e-10, atol=1e-12)


def test_regmean_with_equal_statistics_is_the_linear_average(layer):
    weights, inputs = layer
    shared = gram(inputs[0])
    merged = get_method("regmean")(weights, [0.3, 0.7], statistics=[shared, shared.clone()], alpha=0.5)
    assert torch.allclose(merged, 0.3 * weights[0] + 0.7 * weights[1], rtol=1e-9, atol=1e-12)


def test_regmean_fits_the_seen_directions_and_averages_the_unseen_ones():
    """Inputs that never use the last feature: the fit holds where the examples live, and the column of
    that feature (which no example can tell apart) is the linear average."""
    weights = [rand(2, 4, seed=1), rand(2, 4, seed=2)]
    inputs = [rand(10, 4, seed=3), rand(10, 4, seed=4)]
    for x in inputs:
        x[:, 3] = 0
    ridged: list = []
    merged = get_method("regmean")(weights, [0.5, 0.5], statistics=[gram(x) for x in inputs], alpha=1.0,
                                   ridged=ridged, name="dense")
    assert ridged == ["dense"]
    average = 0.5 * (weights[0] + weights[1])
    assert torch.allclose(merged[:, 3], average[:, 3], atol=1e-6)
    stacked_inputs = np.vstack([x[:, :3].numpy() for x in inputs])
    stacked_outputs = np.vstack([(x @ w.T).numpy() for x, w in zip(inputs, weights)])
    fit, *_ = np.linalg.lstsq(stacked_inputs, stacked_outputs, rcond=None)
    np.testing.assert_allclose(merged[:, :3].numpy(), fit.T, atol=1e-6)


def test_regmean_without_statistics_is_linear(layer):
    weights, _ = layer
    merged = get_method("regmean")(weights, [0.25, 0.75], statistics=None)
    assert torch.allclose(merged, 0.25 * weights[0] + 0.75 * weights[1])


def test_regmean_of_an_in_by_out_weight_conv1d():
    weights = [rand(5, 3, seed=1), rand(5, 3, seed=2)]  # GPT-2's Conv1D: y = x W
    inputs = [rand(7, 5, seed=3), rand(9, 5, seed=4)]
    merged = get_method("regmean")(weights, [0.5, 0.5], statistics=[gram(x) for x in inputs], alpha=1.0,
                                   transposed=False)
    stacked_inputs = np.vstack([x.numpy() for x in inputs])
    stacked_outputs = np.vstack([(x @ w).numpy() for x, w in zip(inputs, weights)])
    fit, *_ = np.linalg.lstsq(stacked_inputs, stacked_outputs, rcond=None)
    np.testing.assert_allclose(merged.numpy(), fit, rtol=1e-9, atol=1e-10)


def test_regmean_returns_the_inputs_dtype(layer):
    weights, inputs = layer
    merged = get_method("regmean")([w.float() for w in weights], [0.5, 0.5],
                                   statistics=[gram(x).float() for x in inputs])
    assert merged.dtype == torch.float32


def test_fisher_matches_its_formula():
    thetas = [rand(4, 3, seed=1), rand(4, 3, seed=2), rand(4, 3, seed=3)]
    fishers = [rand(4, 3, seed=s).abs() for s in (4, 5, 6)]
    weights = [0.2, 0.3, 0.5]
    eps = 1e-6
    expected = (sum(w * (f + eps) * t for w, f, t in zip(weights, fishers, thetas))
                / sum(w * (f + eps) for w, f in zip(weights, fishers)))
    merged = get_method("fisher")(thetas, weights, statistics=fishers, epsilon=eps)
    assert torch.allclose(merged, expected, rtol=1e-12)


def test_fisher_of_a_tensor_larger_than_a_block_is_the_same_to_the_bit_as_all_at_once(monkeypatch):
    """A large tensor is averaged a block of entries at a time (bounded float64 work): the same values."""
    from cocktail.merging import data_aware

    thetas = [rand(5, 7, seed=1).float(), rand(5, 7, seed=2).float()]
    fishers = [rand(5, 7, seed=3).abs().float() ** 3, rand(5, 7, seed=4).abs().float() ** 3]
    at_once = get_method("fisher")(thetas, [0.3, 0.7], statistics=fishers)
    monkeypatch.setattr(data_aware, "FISHER_BLOCK", 4)  # 35 entries: 9 blocks, the last one short
    blocks = get_method("fisher")(thetas, [0.3, 0.7], statistics=fishers)
    assert blocks.dtype == torch.float32 and torch.equal(blocks, at_once)
    shares = [(f.double() + 1e-12) * w for f, w in zip(fishers, [0.3, 0.7])]
    expected = (sum(sh * t.double() for sh, t in zip(shares, thetas)) / sum(shares)).float()
    assert torch.equal(blocks, expected)


def test_fisher_with_equal_fishers_is_linear():
    thetas = [rand(4, 3, seed=1), rand(4, 3, seed=2)]
    shared = rand(4, 3, seed=4).abs()
    merged = get_method("fisher")(thetas, [0.3, 0.7], statistics=[shared, shared.clone()])
    assert torch.allclose(merged, 0.3 * thetas[0] + 0.7 * thetas[1], rtol=1e-12)


def test_fisher_entries_no_loss_moves_are_averaged_linearly():
    thetas = [rand(4, 3, seed=1), rand(4, 3, seed=2)]
    zero = torch.zeros(4, 3, dtype=torch.float64)
    merged = get_method("fisher")(thetas, [0.4, 0.6], statistics=[zero, zero.clone()])
    assert torch.allclose(merged, 0.4 * thetas[0] + 0.6 * thetas[1], rtol=1e-12)


def test_fisher_entry_one_model_cares_about_follows_that_model():
    thetas = [torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([3.0, 3.0], dtype=torch.float64)]
    fishers = [torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)]
    merged = get_method("fisher")(thetas, [0.5, 0.5], statistics=fishers)
    assert torch.allclose(merged, torch.tensor([1.0, 3.0], dtype=torch.float64), atol=1e-9)


def test_normalized_fisher_divides_each_models_fisher_by_its_norm_over_all_tensors():
    thetas = [rand(4, 3, seed=1), rand(4, 3, seed=2)]
    fishers = [rand(4, 3, seed=4).abs(), rand(4, 3, seed=5).abs()]
    norms = [7.0, 0.25]  # each model's norm over every tensor, not only this one
    expected = (sum(w * (f / n + 1e-12) * t for w, f, n, t in zip([0.4, 0.6], fishers, norms, thetas))
                / sum(w * (f / n + 1e-12) for w, f, n in zip([0.4, 0.6], fishers, norms)))
    merged = get_method("fisher")(thetas, [0.4, 0.6], statistics=fishers, normalize_fisher=True, norms=lambda: norms)
    assert torch.allclose(merged, expected, rtol=1e-12)


def test_normalized_fisher_is_blind_to_one_models_fisher_being_steeper_everywhere():
    """A fine-tune on its own loss can have a Fisher many times the base's everywhere: without
    normalize_fisher it takes over every entry, with it only the Fishers' shapes count."""
    thetas = [rand(4, 3, seed=1), rand(4, 3, seed=2)]
    shape = rand(4, 3, seed=4).abs()
    fisher = get_method("fisher")
    steep = [shape * 1000, shape.clone()]
    plain = fisher(thetas, [0.5, 0.5], statistics=steep)
    normalized = fisher(thetas, [0.5, 0.5], statistics=steep, normalize_fisher=True,
                        norms=lambda: [float(f.norm()) for f in steep])
    assert torch.allclose(plain, thetas[0], atol=1e-2 * float(thetas[1].abs().max()))
    assert torch.allclose(normalized, 0.5 * thetas[0] + 0.5 * thetas[1], rtol=1e-12)


def test_normalized_fisher_needs_the_whole_models_norms():
    from cocktail.errors import InputError

    thetas = [rand(2, seed=1), rand(2, seed=2)]
    with pytest.raises(InputError, match="normalize_fisher"):
        get_method("fisher")(thetas, [0.5, 0.5], statistics=[t.abs() for t in thetas], normalize_fisher=True)


@pytest.mark.parametrize("name, value", [("alpha", 1.5), ("alpha", -0.1), ("epsilon", 0.0)])
def test_out_of_range_parameters_are_refused(name, value):
    from cocktail.merging.methods import parameter_problem

    assert parameter_problem(name, value) is not None


@pytest.mark.parametrize("name", ["regmean", "fisher"])
def test_data_aware_methods_do_not_modify_their_inputs(layer, name):
    weights, inputs = layer
    statistics = [gram(x) for x in inputs] if name == "regmean" else [w.abs() for w in weights]
    copies = [w.clone() for w in weights], [s.clone() for s in statistics]
    get_method(name)(weights, [0.5, 0.5], statistics=statistics)
    assert all(torch.equal(a, b) for a, b in zip(weights, copies[0]))
    assert all(torch.equal(a, b) for a, b in zip(statistics, copies[1]))
