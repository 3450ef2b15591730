"""SPEC §8 estimators on systems with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from ngc.dynamics.jacobian import decompose, sym_top_eigenvalue
from ngc.dynamics.lyapunov import lyapunov
from ngc.dynamics.trajectory import eager_attention, layer_states
from ngc.models.tiny import build_tiny_model


def linear_map(sym_eigenvalues: torch.Tensor, skew_scale: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(sym_eigenvalues), len(sym_eigenvalues), generator=g, dtype=torch.float64))
    S = torch.randn(len(sym_eigenvalues), len(sym_eigenvalues), generator=g, dtype=torch.float64)
    return Q @ torch.diag(sym_eigenvalues) @ Q.T + skew_scale * (S - S.T) / 2


def test_linear_map_with_a_chosen_spectrum():
    eigenvalues = torch.linspace(-2.0, 0.7, 40, dtype=torch.float64)
    A = linear_map(eigenvalues, skew_scale=0.3)
    x = torch.randn(40, dtype=torch.float64)
    result = decompose(lambda h: A @ h, x, probes=400, lanczos_steps=40)
    sym, skew = (A + A.T) / 2, (A - A.T) / 2
    assert result.divergence == pytest.approx(float(torch.trace(A)) / 40, abs=4 * result.divergence_se)
    assert result.sym_norm == pytest.approx(float(sym.norm()), rel=0.1)
    assert result.skew_norm == pytest.approx(float(skew.norm()), rel=0.1)
    assert result.driving_ratio == pytest.approx(float(skew.norm() / sym.norm()), rel=0.15)
    assert result.sym_top == pytest.approx(0.7, abs=1e-8)  # Lanczos with a full basis is exact


def test_a_purely_skew_map_is_all_driving_and_no_contraction():
    A = linear_map(torch.zeros(20, dtype=torch.float64), skew_scale=1.0)
    result = decompose(lambda h: A @ h, torch.randn(20, dtype=torch.float64), probes=32)
    assert math.isinf(result.driving_ratio) or result.driving_ratio > 1e6
    assert abs(result.divergence) < 1e-12 and abs(result.sym_top) < 1e-8


def test_top_eigenvalue_of_a_nonlinear_map_at_a_point():
    W = linear_map(torch.linspace(-1, 0.5, 12, dtype=torch.float64), skew_scale=0.0, seed=2)
    x = torch.zeros(12, dtype=torch.float64)  # tanh'(0) = 1: the Jacobian at 0 is W itself
    assert sym_top_eigenvalue(lambda h: torch.tanh(W @ h), x, steps=12) == pytest.approx(0.5, abs=1e-8)


def recurrence(a: float, nonlinear: bool):
    """h_t = a h_{t-1} + e_t (or tanh of it): one 'layer' whose token-time exponent is log a."""

    def trajectory(e: torch.Tensor) -> torch.Tensor:
        states, h = [], torch.zeros(e.shape[1], dtype=e.dtype)
        for t in range(e.shape[0]):
            h = a * h + e[t]
            h = torch.tanh(h) if nonlinear else h
            states.append(h)
        return torch.stack(states).unsqueeze(0)

    return trajectory


@pytest.mark.parametrize("epsilon", [1e-3, None])
def test_contracting_recurrence_has_the_known_exponent(epsilon):
    e = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    estimate = lyapunov(recurrence(0.8, nonlinear=False), e, t0=3, window=20, epsilon=epsilon)
    assert float(estimate[0]) == pytest.approx(math.log(0.8), abs=1e-6)


def test_nonlinear_recurrence_contracts_at_least_as_fast_and_both_estimates_agree():
    e = 0.1 * torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    finite = lyapunov(recurrence(0.9, nonlinear=True), e, t0=3, window=20, epsilon=1e-7)
    linear = lyapunov(recurrence(0.9, nonlinear=True), e, t0=3, window=20, epsilon=None)
    assert float(linear[0]) <= math.log(0.9) + 1e-9
    assert float(finite[0]) == pytest.approx(float(linear[0]), abs=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_tiny_transformer_finite_and_linearised_exponents_agree(family):
    model = build_tiny_model(family).double()
    ids = torch.randint(0, 250, (32,), generator=torch.Generator().manual_seed(2))
    embeds = model.get_input_embeddings()(ids).detach()
    with eager_attention(model):
        trajectory = lambda e: layer_states(model, e)  # noqa: E731
        finite = lyapunov(trajectory, embeds, t0=4, window=16, epsilon=1e-3)  # norms compute in float32
        linear = lyapunov(trajectory, embeds, t0=4, window=16, epsilon=None)
    assert finite.shape == (2,)
    torch.testing.assert_close(finite, linear, atol=1e-3, rtol=0)
