"""The mathematics of mergekit's methods and conventions in cocktail, on small tensors, against formulas
written out here (element by element or with plain torch), not with the functions under test.

Agreement with mergekit itself is in ``test_against_mergekit.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from cocktail.errors import InputError
from cocktail.merging.methods import METHODS, get_method
from cocktail.merging.task_vectors import della_keep_probabilities, keep_count
from cocktail.merging.tensor_settings import check_method_use


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the conventions of the task-vector methods --------------------------------------------------------

def test_rounding_ceil_keeps_more_than_floor_where_density_times_size_is_fractional():
    assert keep_count(10, 0.25, "ceil") == 3 and keep_count(10, 0.25, "floor") == 2
    assert keep_count(10, 0.3, "ceil") == 3 and keep_count(10, 0.3, "floor") == 3
    base = torch.zeros(10)
    model = torch.arange(1.0, 11.0)
    for rounding, kept in (("ceil", 3), ("floor", 2)):
        out = get_method("ties")([model], [1.0], base, density=0.25, rounding=rounding)
        assert torch.equal(out, torch.where(model > 10 - kept, model, 0.0)), rounding


def test_zero_sign_decides_entries_whose_weighted_deltas_cancel():
    base = torch.tensor([0.0, 0.0])
    models = [torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 1.0])]
    kept = get_method("ties")(models, [0.5, 0.5], base, density=1.0, zero_sign="base")
    assert kept.tolist() == [0.0, 1.5]  # entry 0 cancels: the base; entry 1: mean of the agreeing deltas
    plus = get_method("ties")(models, [0.5, 0.5], base, density=1.0, zero_sign="positive")
    assert plus.tolist() == [1.0, 1.5]  # entry 0: + is elected, only the first model agrees


def test_ties_normalize_false_sums_the_agreeing_weighted_deltas():
    base = rand(6, seed=1)
    deltas = [rand(6, seed=2), rand(6, seed=3), rand(6, seed=4)]
    weights = [0.5, 0.7, 0.4]
    out = get_method("ties")([base + d for d in deltas], weights, base, density=1.0, normalize=False)
    for i in range(6):
        total = sum(w * d[i] for w, d in zip(weights, deltas))
        agreeing = sum(w * d[i] for w, d in zip(weights, deltas) if d[i] * total > 0)
        assert math.isclose(out[i].item(), base[i].item() + agreeing, abs_tol=1e-5)


def test_dare_rescale_l1_keeps_the_l1_norm_and_none_keeps_the_entries():
    base = torch.zeros(200)
    model = rand(200, seed=5)
    by_density = get_method("dare_linear")([model], [1.0], base, density=0.4, generator=gen(9))
    by_l1 = get_method("dare_linear")([model], [1.0], base, density=0.4, generator=gen(9), rescale="l1")
    unscaled = get_method("dare_linear")([model], [1.0], base, density=0.4, generator=gen(9), rescale="none")
    kept = by_density != 0  # the same draw: the same entries are kept
    assert torch.equal(kept, by_l1 != 0) and torch.equal(kept, unscaled != 0)
    assert torch.allclose(by_density[kept], model[kept] / 0.4)
    assert torch.equal(unscaled[kept], model[kept])
    assert math.isclose(by_l1.abs().sum().item(), model.abs().sum().item(), rel_tol=1e-5)
    assert torch.allclose(by_l1[kept], model[kept] * model.abs().sum() / model[kept].abs().sum(), rtol=1e-5)


def test_dare_ties_normalize_false_sums_instead_of_averaging():
    base = torch.zeros(5)
    models = [torch.tensor([1.0, 2.0, 3.0, -1.0, 1.0]), torch.tensor([3.0, 2.0, -1.0, -3.0, 1.0])]
    summed = get_method("dare_ties")(models, [1.0, 1.0], base, density=1.0, generator=gen(0), normalize=False)
    averaged = get_method("dare_ties")(models, [1.0, 1.0], base, density=1.0, generator=gen(0))
    assert summed.tolist() == [4.0, 4.0, 3.0, -4.0, 2.0]
    assert averaged.tolist() == [2.0, 2.0, 3.0, -2.0, 1.0]


def test_model_stock_without_clamp_follows_the_formula_for_deltas_pointing_apart():
    base = torch.zeros(2)
    models = [torch.tensor([1.0, 0.2]), torch.tensor([-1.0, 0.3]), torch.tensor([0.1, -1.0])]
    deltas = models
    pairs = [(0, 1), (0, 2), (1, 2)]
    cos = sum(float(deltas[i] @ deltas[j] / (deltas[i].norm() * deltas[j].norm())) for i, j in pairs) / 3
    assert cos < 0
    ratio = 3 * cos / (1 + 2 * cos)
    mean = sum(models) / 3
    out = get_method("model_stock")(models, [], base, clamp=False)
    assert torch.allclose(out, ratio * mean + (1 - ratio) * base, atol=1e-6)
    assert torch.equal(get_method("model_stock")(models, [], base), base)  # clamped: stays at the base


def test_model_stock_filter_wise_takes_one_ratio_per_row():
    base = rand(3, 4, seed=10)
    models = [base + rand(3, 4, seed=s) for s in (11, 12, 13)]
    out = get_method("model_stock")(models, [], base, filter_wise=True, clamp=False)
    for row in range(3):
        d = [m[row] - base[row] for m in models]
        cos = sum(float(d[i] @ d[j] / (d[i].norm() * d[j].norm())) for i, j in ((0, 1), (0, 2), (1, 2))) / 3
        ratio = 3 * cos / (1 + 2 * cos)
        expected = ratio * sum(m[row] for m in models) / 3 + (1 - ratio) * base[row]
        assert torch.allclose(out[row], expected, atol=1e-5), row


def test_conventions_are_checked_and_read_from_a_command_line():
    ties = get_method("ties")
    assert ties.convention("normalize", "false") is False and ties.convention("rescale", "l1") == "l1"
    with pytest.raises(InputError, match="rescale of ties must be one of density, l1, none, got 'L2'"):
        check_method_use(ties, [None, None], "base", {"rescale": "L2"})
    with pytest.raises(InputError, match="normalize of ties must be true or false"):
        check_method_use(ties, [None, None], "base", {"normalize": 2})


# --- Model Breadcrumbs ---------------------------------------------------------------------------------

def test_breadcrumbs_drops_the_outliers_and_the_smallest():
    base = torch.zeros(10)
    model = torch.tensor([5.0, -1.0, 9.0, 2.0, -10.0, 3.0, 7.0, -4.0, 6.0, 8.0])
    out = get_method("breadcrumbs")([model], [1.0], base, density=0.5, gamma=0.2)
    # 10 entries: the 2 largest magnitudes (10, 9) and the 3 smallest (1, 2, 3) go; 5 remain
    assert out.tolist() == [5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0, -4.0, 6.0, 8.0]


def test_breadcrumbs_ties_elects_signs_on_the_breadcrumbs():
    base = torch.zeros(4)
    models = [torch.tensor([1.0, -2.0, 3.0, 4.0]), torch.tensor([-3.0, 1.0, 2.0, 4.0])]
    out = get_method("breadcrumbs_ties")(models, [0.5, 0.5], base, density=1.0, gamma=0.0, normalize=True)
    assert out.tolist() == [-3.0, -2.0, 2.5, 4.0]


# --- DELLA ---------------------------------------------------------------------------------------------

def test_della_keep_probabilities_rise_with_the_magnitude_rank_per_row():
    delta = torch.tensor([[3.0, -1.0, 2.0], [0.1, 0.3, -0.2]])
    probabilities = della_keep_probabilities(delta, density=0.5, epsilon=0.1)
    assert torch.allclose(probabilities, torch.tensor([[0.6, 0.4, 0.5], [0.4, 0.6, 0.5]]))


def test_della_keeps_each_entry_with_its_probability_and_rescales_by_it():
    base = torch.zeros(4000)
    model = rand(4000, seed=20)
    probabilities = della_keep_probabilities(model, density=0.5, epsilon=0.2)
    out = get_method("della_linear")([model], [1.0], base, density=0.5, epsilon=0.2, generator=gen(3),
                                     rescale="density")
    kept = out != 0
    assert torch.allclose(out[kept], model[kept] / probabilities[kept])
    draw = torch.rand(4000, generator=gen(3)) < probabilities  # the draw documented: rand < p
    assert torch.equal(kept, draw)
    large, small = model.abs() > model.abs().median(), model.abs() <= model.abs().median()
    assert kept[large].float().mean() > 0.55 and kept[small].float().mean() < 0.45  # p from 0.3 to 0.7


def test_della_refuses_a_density_and_epsilon_it_cannot_draw_with():
    problem = METHODS["della"].check({"density": 0.9, "epsilon": 0.15}, 2)
    assert "density ± epsilon must lie in (0, 1)" in problem
    assert METHODS["della"].check({"density": (0.5, 0.8), "epsilon": 0.15}, 2) is None


# --- SCE and RAM ---------------------------------------------------------------------------------------

def test_sce_weighs_models_by_mean_square_of_the_agreeing_deltas():
    base = torch.zeros(3)
    d1, d2 = torch.tensor([1.0, -2.0, 2.0]), torch.tensor([3.0, 1.0, -1.0])
    w1, w2 = (d1 ** 2).mean(), (d2 ** 2).mean()
    w1, w2 = w1 / (w1 + w2), w2 / (w1 + w2)
    out = get_method("sce")([d1, d2], [], base)
    # entry 0: both positive; entry 1: sum -1 -> only d1; entry 2: sum 1 -> only d1
    expected = [(w1 * 1 + w2 * 3) / (w1 + w2), -2.0, 2.0]
    assert torch.allclose(out, torch.tensor(expected))


def test_sce_select_topk_keeps_the_entries_where_models_vary_most():
    base = torch.zeros(4)
    models = [torch.tensor([1.0, 1.0, 5.0, 0.0]), torch.tensor([1.0, 3.0, -5.0, 0.1])]
    out = get_method("sce")(models, [], base, select_topk=0.5)  # 3 entries vary, int(1.5) = 1 kept
    assert out[0] == 0 and out[1] == 0 and out[3] == 0 and out[2] != 0


def test_ram_adds_unique_deltas_and_averages_shared_ones():
    base = torch.zeros(3)
    models = [torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 4.0, 0.0])]
    assert get_method("ram")(models, [], base).tolist() == [1.0, 3.0, 0.0]
    # RAM+: model 0 has 1 shared and 1 unique entry: its unique ones scale by 1 + r·min(1/1, alpha)
    out = get_method("ramplus_tl")(models, [], base, r=0.5, alpha=0.2)
    assert torch.allclose(out, torch.tensor([1.1, 3.0, 0.0]))


# --- spherical -----------------------------------------------------------------------------------------

def _slerp(t, a, b):
    omega = math.acos(float(a @ b / (a.norm() * b.norm())))
    return (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)


def test_nuslerp_is_slerp_at_the_weights_ratio():
    a, b = rand(8, seed=30), rand(8, seed=31)
    out = get_method("nuslerp")([a, b], [1.0, 3.0])
    assert torch.allclose(out, _slerp(0.75, a, b), atol=1e-5)
    base = rand(8, seed=32)
    out = get_method("nuslerp")([base + a, base + b], [1.0, 1.0], base)
    assert torch.allclose(out, base + _slerp(0.5, a, b), atol=1e-5)


def test_nuslerp_row_wise_and_per_row_slerp_rows_or_columns():
    a, b = rand(3, 5, seed=33), rand(3, 5, seed=34)
    per_row = get_method("nuslerp")([a, b], [0.7, 0.3], nuslerp_flatten=False)
    for r in range(3):
        assert torch.allclose(per_row[r], _slerp(0.3, a[r], b[r]), atol=1e-5)
    per_column = get_method("nuslerp")([a, b], [0.7, 0.3], nuslerp_flatten=False, nuslerp_row_wise=True)
    for c in range(5):
        assert torch.allclose(per_column[:, c], _slerp(0.3, a[:, c], b[:, c]), atol=1e-5)


def test_multislerp_of_two_orthogonal_vectors_is_their_midpoint_on_the_circle():
    e1, e2 = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])
    out = get_method("multislerp")([e1, e2], [1.0, 1.0])
    assert torch.allclose(out, torch.tensor([math.sqrt(2), math.sqrt(2)]), atol=1e-5)


def test_multislerp_norm_is_the_weighted_mean_norm_and_base_is_the_origin():
    base = rand(6, seed=40)
    deltas = [rand(6, seed=s) for s in (41, 42, 43)]
    weights = [0.2, 0.3, 0.5]
    out = get_method("multislerp")([base + d for d in deltas], weights, base)
    expected_norm = sum(w * d.norm() for w, d in zip(weights, deltas))
    assert math.isclose((out - base).norm().item(), expected_norm.item(), rel_tol=1e-5)


def test_karcher_mean_of_orthogonal_vectors_bisects_them_at_the_mean_length():
    out = get_method("karcher")([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])], [])
    assert torch.allclose(out, torch.tensor([math.sqrt(2), math.sqrt(2)]), atol=1e-4)


def test_karcher_mean_of_three_directions_is_equidistant_from_them():
    units = [torch.eye(3)[i] for i in range(3)]
    out = get_method("karcher")(units, [])
    angles = [math.acos(float(out @ u / out.norm())) for u in units]
    assert max(angles) - min(angles) < 1e-4 and math.isclose(out.norm().item(), 1.0, rel_tol=1e-5)


# --- choosing entry by entry -----------------------------------------------------------------------------

def test_nearswap_takes_the_model_where_it_is_near_the_base():
    base = torch.tensor([0.0, 0.0, 0.0])
    model = torch.tensor([0.05, 0.2, -1.0])
    out = get_method("nearswap")([model], [], base, t=0.1)
    weights = [1.0, 0.1 / 0.2, 0.1 / 1.0]
    assert torch.allclose(out, torch.tensor([w * m for w, m in zip(weights, model.tolist())]))


def test_nearswap_needs_t():
    with pytest.raises(InputError, match="nearswap needs parameter t"):
        check_method_use(get_method("nearswap"), [None], "base", {})
    check_method_use(get_method("nearswap"), [None], "base", {"t": 0.001})


def test_arcee_fusion_takes_the_entries_whose_importance_is_an_outlier():
    base = rand(4, 50, seed=50)
    model = base + 0.01 * rand(4, 50, seed=51)
    model[1, 7] += 3.0
    model[2, 30] -= 2.0
    out = get_method("arcee_fusion")([model], [], base, generator=gen(0))
    p, q = torch.softmax(model, -1) + 1e-8, torch.softmax(base, -1) + 1e-8
    importance = (model - base).abs() * (p * (p / q).log()).sum(-1, keepdim=True)
    ordered = importance.reshape(-1).sort().values
    q1, median, q3 = (ordered[int(f * (ordered.numel() - 1))] for f in (0.25, 0.5, 0.75))
    take = importance >= median + 1.5 * (q3 - q1)
    assert take[1, 7] and take[2, 30] and not take[0].any() and not take[3].any()  # rows with a large KL
    assert torch.equal(out, torch.where(take, model, base))


def test_passthrough_scales_its_one_model():
    model = rand(5, seed=60)
    assert torch.equal(get_method("passthrough")([model], [], scale=0.5), model * 0.5)
    with pytest.raises(InputError, match="passthrough merges exactly 1 model, got 2"):
        check_method_use(get_method("passthrough"), [None, None], None, {})


# --- per-model parameters ------------------------------------------------------------------------------

def test_per_model_density_trims_each_model_to_its_own():
    base = torch.zeros(10)
    a, b = torch.arange(1.0, 11.0), torch.arange(1.0, 11.0) * 2
    out = get_method("ties")([a, b], [0.5, 0.5], base, density=(0.2, 0.5), rounding="floor")
    expected = [(0.5 * float(b[i]) + (0.5 * float(a[i]) if i >= 8 else 0.0)) / (1.0 if i >= 8 else 0.5)
                if i >= 5 else 0.0 for i in range(10)]
    assert torch.allclose(out, torch.tensor(expected))


def test_only_per_model_parameters_are_taken_per_model():
    with pytest.raises(InputError, match=r"models\[1\]\.parameters\.lambda: merge method ties takes no parameter "
                                         r"'lambda' per model"):
        check_method_use(get_method("ties"), [None, None], "base", {}, model_parameters=[{}, {"lambda": 2}])
    check_method_use(get_method("della"), [None, None], "base", {},
                     model_parameters=[{"density": 0.5, "epsilon": 0.1}, {"density": [0.3, 0.7]}])
