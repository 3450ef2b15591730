"""compress() end to end on tiny models of every family, with every method."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from ngc.accounting import account
from ngc.api import collect_statistics, compress, plan
from ngc.arch import decoder_layers
from ngc.config import GRADIENT_ALLOCATIONS, CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.errors import UsageError
from ngc.fit.methods import METHODS
from ngc.fit.whiten import NumericalError
from ngc.models.tiny import build_tiny_model, tiny_families
from ngc.modules.factorized import FactorizedLinear
from ngc.modules.swap import densify
from ngc.topology.groups import Group


def calibration(n_windows: int = 4, window_len: int = 48, seed: int = 0) -> CalibrationWindows:
    tokens = torch.randint(0, 250, (n_windows, window_len), generator=torch.Generator().manual_seed(seed))
    return CalibrationWindows(tokens, "random", None, seed)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", tiny_families())
def test_every_family_compresses_with_every_method_and_generates(family, method):
    model = build_tiny_model(family).eval()
    ids = torch.randint(0, 250, (1, 12), generator=torch.Generator().manual_seed(1))
    dense = logits(model, ids)
    result = compress(model, CompressionConfig(method=method, ratio=0.3), calibration())
    assert 0.3 <= result.accounting.ratio_removed < 0.36
    # only the gradient allocations (zero-sum, loss) leave blocks dense (past break-even), each one it reports
    dense_groups = result.allocation.get("dense", [])
    assert len(result.accounting.dense_modules) <= len(dense_groups)
    assert bool(result.accounting.dense_modules) == bool(dense_groups)
    assert not dense_groups or METHODS[method].defaults["alloc"] in GRADIENT_ALLOCATIONS
    compressed = logits(model, ids)
    assert torch.isfinite(compressed).all() and dense.shape == compressed.shape
    # the factorised forward is exactly the dense model rebuilt from W = A Bᵀ, and each rebuilt weight has at
    # most the rank its bases allow
    rebuilt = copy.deepcopy(model)
    densify(rebuilt)
    torch.testing.assert_close(logits(rebuilt, ids), compressed, rtol=1e-4, atol=1e-5)
    for module in model.modules():
        if isinstance(module, FactorizedLinear):
            rank = sum(basis.rank for basis in module.bases)
            assert int(torch.linalg.matrix_rank(module.to_dense().detach(), rtol=1e-5)) <= rank  # float32 noise
    out = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape == (1, 15)


def tiny_llama_weight_shapes() -> list[tuple[int, int]]:
    """(m, n) of every member of one layer of the tiny Llama: hidden 64, ffn 128, 4 heads, 2 kv heads."""
    return [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)]


def test_accounting_is_exact_per_matrix():
    model = build_tiny_model("llama")
    ratio = 0.3
    result = compress(model, CompressionConfig(method="svd", ratio=ratio))
    shapes = tiny_llama_weight_shapes() * 2
    ranks = [math.floor((1 - ratio) * m * n / (m + n)) for m, n in shapes]
    kept = sum(k * (m + n) for k, (m, n) in zip(ranks, shapes, strict=True))
    dense = sum(m * n for m, n in shapes)
    head = 260 * 64
    a = result.accounting
    assert (a.decoder_linear_params_dense, a.decoder_linear_params_kept) == (dense, kept)
    assert (a.macs_per_token_dense, a.macs_per_token) == (dense + head, kept + head)
    assert a.model_params_dense - a.model_params_kept == dense - kept
    assert a.model_params_kept == sum(p.numel() for p in model.parameters())
    assert a.stored_bytes == 4 * a.model_params_kept
    assert sorted(g.rank for g in a.groups) == sorted(ranks)


def test_cross_layer_basis_is_one_tensor_and_its_compute_is_counted_per_layer():
    model = build_tiny_model("llama")
    result = compress(model, CompressionConfig(method="basis-sharing", ratio=0.3), calibration())
    layers = decoder_layers(model)
    q0, q1 = layers[0].self_attn.q_proj, layers[1].self_attn.q_proj
    assert isinstance(q0, FactorizedLinear) and q0.bases[0] is q1.bases[0]
    assert q0.bases[0].B.data_ptr() == q1.bases[0].B.data_ptr()
    # q, k, v, gate, up: one basis for both layers, stored once, but each layer computes its own message
    params = macs = 0
    for m, n in [(64, 64), (32, 64), (32, 64), (128, 64), (128, 64)]:
        k = math.floor(0.7 * 2 * m * n / (2 * m + n))
        params += k * (2 * m + n)
        macs += k * (2 * m + 2 * n)
    for m, n in [(64, 64), (64, 128)]:  # o and down stay per matrix
        k = math.floor(0.7 * m * n / (m + n))
        params += 2 * k * (m + n)
        macs += 2 * k * (m + n)
    a = result.accounting
    assert a.decoder_linear_params_kept == params
    assert a.macs_per_token == macs + 260 * 64
    assert a.model_params_kept == sum(p.numel() for p in model.parameters())


def test_intra_group_shares_q_k_v_input_states():
    model = build_tiny_model("llama")
    compress(model, CompressionConfig(method="ngc", topology="intra", ratio=0.3, alloc="uniform"), calibration())
    attn = decoder_layers(model)[0].self_attn
    assert attn.q_proj.bases[0] is attn.k_proj.bases[0] is attn.v_proj.bases[0]
    mlp = decoder_layers(model)[0].mlp
    assert mlp.gate_proj.bases[0] is mlp.up_proj.bases[0] and mlp.down_proj.bases[0] is not mlp.up_proj.bases[0]


def test_streamed_and_precollected_statistics_give_the_same_model():
    calib = calibration()
    streamed = build_tiny_model("qwen2")
    collected = build_tiny_model("qwen2")
    stats = collect_statistics(collected, calib)
    compress(streamed, CompressionConfig(method="svd-llm", ratio=0.4), calib)
    compress(collected, CompressionConfig(method="svd-llm", ratio=0.4), stats)
    ids = torch.randint(0, 250, (1, 10))
    assert torch.allclose(logits(streamed, ids), logits(collected, ids), atol=1e-5)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_the_open_interval_is_refused(ratio):
    with pytest.raises(UsageError, match="outside"):
        CompressionConfig(ratio=ratio)


def test_a_ratio_that_leaves_no_rank_names_the_groups():
    model = build_tiny_model("llama")
    with pytest.raises(UsageError, match="leaves no rank") as info:
        plan(model, CompressionConfig(method="svd", ratio=0.995))
    assert "L0:" in str(info.value)


def test_short_calibration_warns_and_still_fits():
    model = build_tiny_model("llama")
    result = compress(model, CompressionConfig(method="svd-llm", ratio=0.3), calibration(n_windows=1, window_len=40))
    assert any("singular" in w for w in result.warnings)
    assert any("ridge" in w for w in result.warnings)


def test_nan_weights_are_refused_before_any_work():
    model = build_tiny_model("llama")
    with torch.no_grad():
        decoder_layers(model)[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match=r"layers\.1\.mlp\.up_proj"):
        compress(model, CompressionConfig(method="svd-llm", ratio=0.3), calibration())


def test_methods_needing_data_refuse_to_run_without_it():
    with pytest.raises(UsageError, match="needs calibration"):
        compress(build_tiny_model("llama"), CompressionConfig(method="asvd", ratio=0.3))


def test_fused_module_must_be_compressed_whole():
    with pytest.raises(UsageError, match="c_attn"):
        plan(build_tiny_model("gpt2"), CompressionConfig(method="svd", ratio=0.3, roles=("q", "k")))


def test_baselines_refuse_a_topology():
    with pytest.raises(UsageError, match="fixed structure"):
        plan(build_tiny_model("llama"), CompressionConfig(method="svd-llm", ratio=0.3, topology="intra"))


def test_selected_roles_only():
    model = build_tiny_model("llama")
    result = compress(model, CompressionConfig(method="svd-llm", ratio=0.7, roles=("q", "k", "v")), calibration())
    assert len(result.accounting.dense_modules) == 2 * 4  # o, gate, up, down of both layers stay dense
    assert all(g.id.split(":")[1] in ("q", "k", "v") for g in result.groups)


def test_auto_allocation_keeps_the_budget_and_lowers_the_normalised_loss():
    calib = calibration(n_windows=4, window_len=64)
    uniform, auto = build_tiny_model("llama"), build_tiny_model("llama")
    config = CompressionConfig(method="ngc", topology="intra", ratio=0.4, alloc="uniform", refine="none")
    by_uniform = compress(uniform, config, calib)
    by_auto = compress(auto, dataclasses.replace(config, alloc="auto"), calib)
    kept_uniform = by_uniform.accounting.decoder_linear_params_kept
    assert abs(by_auto.accounting.decoder_linear_params_kept - kept_uniform) <= 0.005 * kept_uniform
    assert by_auto.accounting.decoder_linear_params_kept <= kept_uniform
    assert len({g.rank for g in by_auto.groups}) > len({g.rank for g in by_uniform.groups}) - 1
    assert sum(g.relative_loss for g in by_auto.groups) < sum(g.relative_loss for g in by_uniform.groups)


def test_greedy_allocation_is_optimal_on_a_toy():
    from ngc.fit.allocate import greedy_ranks
    from ngc.topology.blocks import Member
    from ngc.topology.groups import Group

    a = Group((Member("a", "q", 0, 10, 10, "L0:q"),))
    b = Group((Member("b", "q", 1, 10, 10, "L1:q"),))
    spectra = {a.id: torch.tensor([10.0, 9.0, 8.0, 7.0, 1.0]), b.id: torch.tensor([10.0, 1.0, 0.5, 0.1, 0.1])}
    ranks = greedy_ranks([a, b], spectra, ratio_removed=0.6)  # uniform: floor(0.4 * 100 / 20) = 2 each
    assert ranks == {a.id: 3, b.id: 1}


def test_sequential_update_runs_and_tracks_the_dense_model_better():
    calib = calibration(n_windows=6, window_len=64, seed=4)
    dense = build_tiny_model("llama")
    standard, sequential = build_tiny_model("llama"), build_tiny_model("llama")
    compress(standard, CompressionConfig(method="svd-llm", ratio=0.5), calib)
    result = compress(sequential, CompressionConfig(method="svd-llm", ratio=0.5, sequential=True), calib)
    assert result.accounting.ratio_removed >= 0.5
    ids = calib.tokens

    def error(model) -> float:
        return float((logits(model, ids) - logits(dense, ids)).pow(2).mean())

    assert error(sequential) < error(standard)


def test_sequential_needs_whitening_and_windows():
    with pytest.raises(UsageError, match="--sequential needs a whitening method"):
        plan(build_tiny_model("llama"), CompressionConfig(method="asvd", ratio=0.3, sequential=True))
    model = build_tiny_model("llama")
    stats = collect_statistics(model, calibration())
    stats.tokens = None
    with pytest.raises(UsageError, match="sequential update needs calibration windows"):
        compress(model, CompressionConfig(method="svd-llm", ratio=0.3, sequential=True), stats)


@pytest.mark.parametrize("family", tiny_families())
def test_every_family_runs_the_full_ngc_pipeline(family):
    model = build_tiny_model(family)
    config = CompressionConfig(method="ngc", topology="intra-cross-2", ratio=0.4, alloc="auto", sequential=True)
    result = compress(model, config, calibration(window_len=64))
    kept = result.accounting.decoder_linear_params_kept
    uniform = build_tiny_model(family)
    uniform_config = CompressionConfig(method="ngc", topology="intra-cross-2", ratio=0.4, alloc="uniform")
    expected = compress(uniform, uniform_config, calibration())
    assert abs(kept - expected.accounting.decoder_linear_params_kept) <= 0.005 * kept
    out = model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape == (1, 5)


def test_exact_objective_refines_cross_layer_groups_only():
    model = build_tiny_model("llama")
    config = CompressionConfig(method="basis-sharing", ratio=0.4, exact=True)
    result = compress(model, config, calibration(window_len=64))
    assert set(result.exact) == {"L0-1:q", "L0-1:k", "L0-1:v", "L0-1:gate", "L0-1:up"}
    assert all(after < before for before, after in result.exact.values())


@pytest.mark.parametrize("method", ["svd", "svd-llm", "basis-sharing"])
def test_local_refinement_lowers_each_groups_output_error(method):
    model = build_tiny_model("llama")
    config = CompressionConfig(method=method, ratio=0.4, refine="local", refine_steps=20)
    result = compress(model, config, calibration(window_len=64))
    assert len(result.local) == len(result.groups)
    assert all(after <= before for before, after in result.local.values())
    if method != "svd-llm":  # per-matrix whitening is already the optimum of this objective: nothing to gain
        assert sum(after for _, after in result.local.values()) < sum(b for b, _ in result.local.values())


def test_distillation_lowers_the_kl_and_keeps_the_parameter_count():
    calib = calibration(n_windows=4, window_len=32)
    plain = build_tiny_model("llama")
    compress(plain, CompressionConfig(method="ngc", ratio=0.5, sequential=False, refine="none"), calib)
    model = build_tiny_model("llama")
    config = CompressionConfig(
        method="ngc", ratio=0.5, sequential=False, refine="distill", refine_steps=12, refine_lr=1e-2
    )
    result = compress(model, config, calib)
    assert result.accounting.model_params_kept == account(plain).model_params_kept
    dense = build_tiny_model("llama")
    from ngc.refine.distill import kl_to_teacher

    def kl(student) -> float:
        return float(kl_to_teacher(logits(student, calib.tokens), logits(dense, calib.tokens)))

    assert kl(model) < kl(plain)
    assert result.distill["steps"] == 12 and len(result.distill["last_losses"]) == 5


def test_auto_topology_picks_a_structure_per_unit_and_fits_it():
    model = build_tiny_model("llama")
    result = compress(model, CompressionConfig(method="ngc", topology="auto", ratio=0.4), calibration(window_len=64))
    assert set(result.decisions) == {"L0-1:q+k+v", "L0-1:o", "L0-1:gate+up", "L0-1:down"}
    assert set(result.decisions.values()) <= {"per-matrix", "intra", "cross-2", "intra-cross-2"}
    assert 0.4 <= result.accounting.ratio_removed < 0.45
    assert {g.id for g in result.groups} == {g.id for g in result.topology}


def test_auto_topology_under_the_loss_rule_shares_bases_at_the_selected_matrix_ranks():
    calib = calibration(window_len=64)
    fields = {"method": "ngc", "ratio": 0.3, "alloc": "loss", "refine": "none", "sequential": False}
    alone = compress(build_tiny_model("llama"), CompressionConfig(topology="per-matrix", **fields), calib)
    auto = compress(build_tiny_model("llama"), CompressionConfig(topology="auto", **fields), calib)
    # the selection over single matrices is the same whatever the structure; only the sharing differs
    assert auto.allocation["matrix_ranks"] == alone.allocation["matrix_ranks"]
    assert auto.allocation["dense"] == alone.allocation["dense"]
    assert set(auto.decisions) == {"L0-1:q+k+v", "L0-1:o", "L0-1:gate+up", "L0-1:down"}
    matrix_ranks = auto.allocation["matrix_ranks"]
    for group in auto.topology:
        stored = sum(matrix_ranks[Group((m,)).id] * (m.m + m.n) for m in group.members)
        assert auto.ranks[group.id] == max(1, stored // (group.m_total + group.n))
    assert auto.accounting.model_params_kept <= alone.accounting.model_params_kept


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"alloc": "greedy"}, "unknown allocation 'greedy'"),
        ({"refine": "finetune"}, "unknown refinement 'finetune'"),
        ({"refine": "local", "refine_steps": -1}, "steps >= 0"),
        ({"refine": "distill", "refine_lr": 0.0}, "positive learning rate"),
    ],
)
def test_bad_config_values_are_refused(fields, message):
    with pytest.raises(UsageError, match=message):
        CompressionConfig(method="ngc", ratio=0.3, **fields)


def test_exact_needs_a_whitening_method():
    with pytest.raises(UsageError, match="--exact needs a whitening method"):
        plan(build_tiny_model("llama"), CompressionConfig(method="fwsvd", ratio=0.3, exact=True))


def test_sequential_with_cross_layer_groups_says_which_members_it_cannot_correct():
    model = build_tiny_model("llama")
    result = compress(model, CompressionConfig(method="ngc", topology="intra-cross-2", ratio=0.3), calibration())
    assert any("cross-layer groups" in warning for warning in result.warnings)
    plain = compress(build_tiny_model("llama"), CompressionConfig(method="ngc", ratio=0.3), calibration())
    assert not any("cross-layer groups" in warning for warning in plain.warnings)


def test_the_loss_allocation_floor_keeps_every_matrix_at_its_share_of_the_uniform_rank():
    from ngc.fit.allocate import uniform_rank
    from ngc.topology.blocks import find_members, parse_roles
    from ngc.topology.groups import Group

    model = build_tiny_model("llama")
    config = CompressionConfig(method="ngc", ratio=0.4, alloc="loss", alloc_floor=0.8, refine="none")
    result = compress(model, config, calibration(window_len=64))
    floors = {
        Group((m,)).id: math.ceil(0.8 * uniform_rank(Group((m,)), 0.4))
        for m in find_members(build_tiny_model("llama"), parse_roles(config.roles))
    }
    ranks = result.allocation["matrix_ranks"]
    dense = set(result.allocation.get("dense", []))
    assert ranks and all(ranks[gid] >= floors[gid] for gid in ranks if gid not in dense)
    assert 0.4 <= result.accounting.ratio_removed < 0.45


def test_zs_svds_rank_floor_binds_its_own_rule_only():
    # from R = 0.6 ZS-SVD keeps every matrix at 0.3 x its break-even rank, about 30 % of its weights: R = 0.9 is out
    # of its reach; NGC's loss rule has its own floor (half the uniform rank from R = 0.5) and reaches it
    fields = {"ratio": 0.9, "roles": ("q", "k", "v"), "refine": "none", "sequential": False}
    with pytest.raises(UsageError, match="ZS-SVD's floor"):
        compress(build_tiny_model("llama"), CompressionConfig(method="zs-svd", **fields), calibration())
    config = CompressionConfig(method="ngc", **fields)
    assert (config.alloc, config.alloc_floor) == ("loss", 0.5)
    from ngc.topology.blocks import find_members, parse_roles

    result = compress(build_tiny_model("llama"), config, calibration())
    qkv = sum(m.m * m.n for m in find_members(build_tiny_model("llama"), parse_roles(config.roles)))
    removed = result.accounting.decoder_linear_params_dense - result.accounting.decoder_linear_params_kept
    assert 0.9 * qkv <= removed < 0.95 * qkv
