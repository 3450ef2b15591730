"""The non-bilinear interaction (SPEC §1 research option) trains and counts its parameters."""

from __future__ import annotations

import torch

from ngc.fit.interaction import fit_interaction, interaction_params
from ngc.fit.whiten import whitening
from tests.unit.fit.test_closed_form import anisotropic_inputs


def test_interaction_fit_counts_parameters_and_approximates_the_block():
    g = torch.Generator().manual_seed(0)
    X = anisotropic_inputs(400, 16)
    C = X.T @ X
    W = torch.randn(12, 16, generator=g, dtype=torch.float64)
    fit = fit_interaction(W, C, whitening(C), k=4, k_out=6, steps=150)
    assert fit.stored_params == interaction_params(12, 16, 4, 6, separate=False)
    assert fit.weight().shape == (12, 16)
    error = W - fit.weight()
    energy = float(((W @ C) * W).sum())
    assert abs(float(((error @ C) * error).sum()) / energy - fit.loss) < 1e-9
    assert fit.loss < 0.5
    separate = fit_interaction(W, C, whitening(C), k=4, k_out=6, steps=10, separate=True)
    assert len(separate.M) == 2 and separate.stored_params == interaction_params(12, 16, 4, 6, separate=True)
