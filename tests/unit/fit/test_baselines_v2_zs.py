"""SVD-LLM V2 (eigen whitening, per-role ratios) and ZS-SVD (component scores, zero-sum rule, break-even)."""

from __future__ import annotations

import math

import pytest
import torch

from ngc.errors import UsageError
from ngc.fit.allocate import break_even_rank, uniform_rank, v2_ranks, v2_ratios
from ngc.fit.closed_form import fit_group
from ngc.fit.whiten import whitening
from ngc.fit.zero_sum import (
    Candidates,
    check_reachable,
    component_scores,
    keep_rank_ratio,
    zero_sum_select,
)
from ngc.topology.blocks import Member
from ngc.topology.groups import Group

from .test_closed_form import anisotropic_inputs, output_error


def member(layer: int, role: str, m: int, n: int) -> Member:
    return Member(f"model.layers.{layer}.{role}", role, layer, m, n, f"L{layer}:{role}")


# --- eigendecomposition whitening -------------------------------------------------------------------------------


@pytest.mark.parametrize("members", [1, 3])
def test_eigen_whitening_truncation_loss_is_the_discarded_spectrum(members):
    g = torch.Generator().manual_seed(3)
    n, k = 20, 6
    X = anisotropic_inputs(300, n)
    C = X.T @ X
    transform = whitening(C, "C", "eigen")
    assert transform.factorisation == "eigh" and transform.ridge == 0.0
    assert torch.allclose(transform.factor @ transform.factor.T, C, rtol=1e-9, atol=1e-9 * float(C.abs().max()))
    eigenvalues = torch.linalg.eigvalsh(C)
    assert transform.condition == pytest.approx(float(eigenvalues[0] / eigenvalues[-1]), rel=1e-9)
    weights = [torch.randn(8 + 3 * s, n, generator=g, dtype=torch.float64) for s in range(members)]
    fit = fit_group(weights, k, transform)
    error = sum(output_error(X, W, A @ fit.B.T) for W, A in zip(weights, fit.A, strict=True))
    assert error == pytest.approx(float(fit.sigma[k:].pow(2).sum()), rel=1e-8)
    # the same optimum as the Cholesky factor's (the truncation is unique for distinct singular values)
    cholesky = fit_group(weights, k, whitening(C, "C"))
    assert fit.loss == pytest.approx(cholesky.loss, rel=1e-8)


def test_eigen_whitening_floors_and_counts_a_singular_direction():
    X = anisotropic_inputs(100, 12)
    X[:, 0] = X[:, 1]  # C singular: one zero eigenvalue
    transform = whitening(X.T @ X, "C", "eigen")
    assert transform.floored >= 1 and transform.condition < 1e-12
    assert torch.isfinite(transform.unapply_basis(torch.eye(12, dtype=torch.float64))).all()


# --- SVD-LLM V2's allocation ------------------------------------------------------------------------------------


def test_v2_ratios_follow_the_inverse_log_losses_and_average_to_r():
    losses = [10.0, 100.0, 1000.0, 50.0]
    ratios = v2_ratios(losses, 0.3, [0.99] * 4)
    s = [1 / math.log(x) for x in losses]
    assert ratios == pytest.approx([4 * 0.3 * si / sum(s) for si in s], rel=1e-12)
    assert sum(ratios) / 4 == pytest.approx(0.3, rel=1e-12)
    assert ratios[0] > ratios[3] > ratios[1] > ratios[2]  # a larger loss: less removed


def test_v2_ratios_clipped_to_what_keeps_rank_one_still_average_to_r():
    losses = [1.05, 1e6, 1e6, 1e6]  # 1/log(1.05) is huge: the first would remove more than everything
    ratios = v2_ratios(losses, 0.5, [0.9] * 4)
    assert ratios[0] == pytest.approx(0.9)
    assert all(0.0 <= r <= 0.9 for r in ratios)
    assert sum(ratios) / 4 == pytest.approx(0.5, rel=1e-12)


def test_v2_ranks_keep_the_uniform_parameter_total_within_each_role():
    groups = [Group((member(layer, role, m, 48),)) for layer in range(6) for role, m in (("q", 48), ("up", 96))]
    losses = {g.id: 10.0 ** (1 + (i % 5)) for i, g in enumerate(groups)}
    ranks, uniform_roles = v2_ranks(groups, losses, 0.4)
    assert not uniform_roles
    for role in ("q", "up"):
        mine = [g for g in groups if g.members[0].role == role]
        kept = sum(g.params_at_rank(ranks[g.id]) for g in mine)
        uniform = sum(g.params_at_rank(uniform_rank(g, 0.4)) for g in mine)
        assert abs(kept - uniform) <= len(mine) * (mine[0].m_total + mine[0].n)  # floor rounding only
        assert len({ranks[g.id] for g in mine}) > 1  # non-uniform
        assert all(1 <= ranks[g.id] <= break_even_rank(g) for g in mine)


def test_v2_ranks_keep_the_uniform_ratio_where_an_error_is_below_one():
    groups = [Group((member(layer, "q", 16, 16),)) for layer in range(3)]
    ranks, uniform_roles = v2_ranks(groups, {g.id: 0.5 for g in groups}, 0.3)
    assert uniform_roles == ["q"]
    assert set(ranks.values()) == {uniform_rank(groups[0], 0.3)}


# --- ZS-SVD's scores --------------------------------------------------------------------------------------------


def test_component_scores_are_the_exact_change_of_a_linear_loss():
    """For a loss linear in W, ``L(W) = ⟨G, W⟩``, the first-order score of each component is exact."""
    g = torch.Generator().manual_seed(4)
    n = 10
    X = anisotropic_inputs(80, n)
    transform = whitening(X.T @ X, "C")
    W = torch.randn(7, n, generator=g, dtype=torch.float64)
    G = torch.randn(7, n, generator=g, dtype=torch.float64)
    sigma, scores = component_scores([W], [G], transform)
    U, S, Vh = torch.linalg.svd(transform.apply(W), full_matrices=False)
    S_inv = torch.linalg.inv(transform.factor)
    for i in range(len(S)):
        removed = W - S[i] * torch.outer(U[:, i], Vh[i]) @ S_inv  # W without component i
        assert float(scores[i]) == pytest.approx(float((G * (removed - W)).sum()), rel=1e-9, abs=1e-12)
    assert torch.allclose(sigma, S)


def test_removing_every_component_changes_a_linear_loss_by_the_sum_of_scores():
    g = torch.Generator().manual_seed(5)
    X = anisotropic_inputs(60, 8)
    transform = whitening(X.T @ X, "C", "eigen")
    weights = [torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(3, 8, generator=g, dtype=torch.float64)]
    grads = [torch.randn_like(w) for w in weights]
    _sigma, scores = component_scores(weights, grads, transform)
    total = -sum(float((G * W).sum()) for G, W in zip(grads, weights, strict=True))  # L(0) − L(W)
    assert float(scores.sum()) == pytest.approx(total, rel=1e-9)


# --- the zero-sum rule and the break-even rule ------------------------------------------------------------------


def test_zero_sum_rule_on_hand_made_scores():
    # each group drops its components in the given order (ascending σ); cost 10, dense 40: saved = 40 − 10 k
    a = Candidates((-3.0, 1.0, 5.0, 0.5), cost=10, dense=40)
    b = Candidates((2.0, -1.0, 4.0, 0.5), cost=10, dense=40)
    # s = 0: smallest non-negative, b's +2 (s = 2, saved 10); s > 0: the negative nearest zero of a's -3 and
    # b's -1, b's -1 (s = 1, saved 20); s > 0: a's -3 (s = -2, saved 30); s <= 0: a's +1 of a's +1, b's +4
    # (s = -1, saved 40)
    selection = zero_sum_select({"a": a, "b": b}, target_saved=40)
    assert selection.ranks == {"a": 2, "b": 2}
    assert selection.saved == 40 and selection.dense == ()
    assert selection.predicted == pytest.approx(-1.0)


def test_zero_sum_never_takes_a_large_negative_first_order_gain_while_a_small_one_waits():
    big = Candidates((-100.0, 0.0, 0.0, 0.0), cost=10, dense=40)  # a large component whose first order says "gain"
    small = Candidates((-0.1, -0.1, -0.1, -0.1), cost=10, dense=40)
    first = Candidates((0.5, 0.5, 0.5, 0.5), cost=10, dense=40)  # s > 0 after this one
    selection = zero_sum_select({"big": big, "small": small, "first": first}, target_saved=40)
    # +0.5 (s = 0.5), then -0.1 three times (s = 0.2 > 0, saved 40): -100 is never taken
    assert selection.ranks == {"big": 4, "small": 1, "first": 3}


def test_per_parameter_order_prefers_the_drop_that_saves_more_per_unit_of_loss():
    # wide: each drop saves 40 parameters for ΔL 2 (0.05 per parameter); narrow: 10 for ΔL 1 (0.1 per parameter)
    wide = Candidates((2.0, 2.0, 2.0, 2.0), cost=40, dense=160)
    narrow = Candidates((1.0, 1.0, 1.0, 1.0), cost=10, dense=40)
    # by |ΔL|: narrow three times (saved 30, its floor), then wide once (40 more)
    by_change = zero_sum_select({"wide": wide, "narrow": narrow}, target_saved=40)
    assert by_change.ranks == {"wide": 3, "narrow": 1} and by_change.saved == 30 + 40
    # per parameter: wide's one drop saves the 40 at once
    per_parameter = zero_sum_select({"wide": wide, "narrow": narrow}, target_saved=40, per_parameter=True)
    assert per_parameter.ranks == {"wide": 3, "narrow": 4} and per_parameter.saved == 40
    assert per_parameter.predicted == 2.0 < by_change.predicted == 5.0


def test_rank_floor_is_a_fraction_of_the_break_even_rank():
    a = Candidates((0.0,) * 20, cost=10, dense=200)  # break-even rank 19 (rank 20 stores as much as dense)
    assert a.break_even == 19 and a.min_rank(0.0) == 1 and a.min_rank(0.3) == 6
    b = Candidates((1.0,) * 20, cost=10, dense=200)
    selection = zero_sum_select({"a": a, "b": b}, target_saved=250, keep_rank_ratio=0.3)
    assert selection.ranks["a"] == 6  # a's zero scores would take it to rank 1; the floor stops it at 6
    assert keep_rank_ratio(0.2) == 0.0 and keep_rank_ratio(0.6) == 0.3


def test_explicit_floors_stop_a_group_and_move_the_drops_to_the_others():
    a = Candidates((0.0,) * 20, cost=10, dense=200)
    b = Candidates((1.0,) * 20, cost=10, dense=200)
    # without floors a's zero scores take it to rank 1 first (saved 190), then b pays the remaining 60
    assert zero_sum_select({"a": a, "b": b}, target_saved=250).ranks == {"a": 1, "b": 14}
    floored = zero_sum_select({"a": a, "b": b}, target_saved=250, floors={"a": 10})
    assert floored.ranks == {"a": 10, "b": 5} and floored.saved == 250
    # a floor above the full rank keeps the group whole (and the break-even rule then leaves it dense)
    whole = zero_sum_select({"a": a, "b": b}, target_saved=150, floors={"a": 99})
    assert whole.ranks["a"] == 20 and whole.dense == ("a",)


def test_allocation_floor_is_checked():
    from ngc.config import CompressionConfig

    assert CompressionConfig(method="ngc", alloc_floor=0.5).alloc_floor == 0.5
    with pytest.raises(UsageError, match="outside") as info:
        CompressionConfig(method="ngc", alloc_floor=1.5)
    assert "--alloc-floor" in info.value.hint


def test_components_dropped_above_break_even_save_nothing_and_the_group_stays_dense():
    a = Candidates((-5.0, 9.0, 9.0, 9.0), cost=10, dense=25)  # rank 3 stores 30 > 25: saves only from rank 2
    b = Candidates((1.0, 1.0, 1.0, 1.0), cost=10, dense=40)
    # s = 0: b's +1 (saved 10); s > 0: a's -5 (a at rank 3 saves nothing); s < 0: b's +1 (saved 20): done
    selection = zero_sum_select({"a": a, "b": b}, target_saved=20)
    assert selection.ranks == {"a": 3, "b": 2}
    assert selection.dense == ("a",) and selection.saved == 20
    assert selection.predicted == pytest.approx(2.0)  # a's drop is undone: a stays dense


def test_break_even_rule_leaves_a_group_dense_and_counts_nothing_for_it():
    # dense 35, cost 10: break-even rank 3.5; rank 4 (full) and rank... saved(k) = max(0, 35 - 10 k)
    a = Candidates((0.1, 0.1, 0.1, 0.1), cost=10, dense=35)
    assert [a.saved(k) for k in (4, 3, 2, 1)] == [0, 5, 15, 25]
    selection = zero_sum_select({"a": a}, target_saved=5)
    assert selection.ranks == {"a": 3} and selection.dense == () and selection.saved == 5


def test_impossible_budget_names_the_fix():
    a = Candidates((0.1, 0.2), cost=10, dense=15)  # even rank 1 saves only 5
    with pytest.raises(UsageError, match="cannot save") as info:
        zero_sum_select({"a": a}, target_saved=10)
    assert "--ratio" in str(info.value) and "floor" not in str(info.value)
    with pytest.raises(UsageError, match="0.3 x its break-even rank or more"):  # the floor is named when it binds
        zero_sum_select({"a": Candidates((0.1,) * 10, cost=10, dense=100)}, target_saved=95, keep_rank_ratio=0.3)


@pytest.mark.parametrize("seed", range(6))
def test_the_shape_only_check_refuses_exactly_the_budgets_the_selection_cannot_reach(seed):
    g = torch.Generator().manual_seed(seed)
    groups = {}
    for i in range(4):
        m, n = (int(x) for x in torch.randint(2, 12, (2,), generator=g))
        scores = tuple(float(x) for x in torch.randn(min(m, n), generator=g))
        groups[f"g{i}"] = Candidates(scores, cost=m + n, dense=m * n)
    units = {"g2": "u", "g3": "u"}
    ratio = 0.3 * seed % 1  # 0 (no ZS-SVD floor) or 0.3
    floors = {"g0": 2}
    # the most the selection can save, by hand: every group at max(⌈ratio · r*⌉, its floor), capped at full rank
    lowest = {k: min(c.full_rank, max(c.min_rank(ratio), floors.get(k, 0))) for k, c in groups.items()}
    per_unit = {}
    for k, c in groups.items():
        per_unit[units.get(k, k)] = per_unit.get(units.get(k, k), 0) + c.dense - lowest[k] * c.cost
    most = sum(max(0, v) for v in per_unit.values())
    if most > 0:
        check_reachable(groups, most, units, ratio, floors)
        selection = zero_sum_select(groups, most, units, ratio, floors=floors)
        assert selection.saved >= most
    with pytest.raises(UsageError, match=f"saves {most}"):
        check_reachable(groups, most + 1, units, ratio, floors)
    with pytest.raises(UsageError, match=f"saves {most}"):
        zero_sum_select(groups, most + 1, units, ratio, floors=floors)


def test_groups_of_one_unit_stay_dense_together():
    # two parts of a fused module: a alone would be past break-even, but the unit saves overall
    a = Candidates((5.0, 5.0), cost=10, dense=10)  # rank 2: 20 stored for 10 dense
    b = Candidates((0.0, 0.0, 0.0, 0.0), cost=10, dense=60)
    selection = zero_sum_select({"a": a, "b": b}, target_saved=30, units={"a": "u", "b": "u"})
    assert selection.dense == ()
    kept = sum(c.cost * selection.ranks[g] for g, c in (("a", a), ("b", b)))
    assert 70 - kept == selection.saved >= 30


def test_candidates_drop_from_the_smallest_singular_value():
    c = Candidates.of_matrix(3, 5, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    assert c.scores == (1.0, 2.0, 3.0) and c.full_rank == 3
    assert (c.cost, c.dense) == (8, 15)


def test_shape_only_candidates_span_the_full_rank_with_zero_scores():
    c = Candidates.of_matrix(7, 4)
    assert c.scores == (0.0,) * 4 and (c.cost, c.dense, c.break_even) == (11, 28, 2)


def test_regroup_shares_a_basis_among_survivors_at_no_more_than_their_per_matrix_cost():
    from ngc.allocation import regroup
    from ngc.topology.blocks import Member
    from ngc.topology.groups import Group

    q, k, v = (Member(f"l.{r}", r, 0, m, 16, "L0:q+k+v") for r, m in (("q", 16), ("k", 4), ("v", 4)))
    group = Group((q, k, v))
    ranks = {"L0:q": 6, "L0:k": 2, "L0:v": 3}
    kept, rank = regroup(group, ranks, dense={"L0:k"})
    assert kept.members == (q, v)
    assert rank == (6 * 32 + 3 * 20) // (20 + 16)  # 7: one shared basis stores no more than the two alone
    assert kept.params_at_rank(rank) <= 6 * 32 + 3 * 20 < kept.params_at_rank(rank + 1)
    assert regroup(group, ranks, dense={"L0:q", "L0:k", "L0:v"}) is None
    alone, one = regroup(group, ranks, dense={"L0:q", "L0:k"})
    assert alone.members == (v,) and one == 3
