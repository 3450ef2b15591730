"""--whitening cholesky|eigen for every whitening method, and the conditioning each group reports."""

from __future__ import annotations

import pytest
import torch

from ngc.api import compress
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.models.tiny import build_tiny_model


def calibration() -> CalibrationWindows:
    tokens = torch.randint(0, 250, (6, 64), generator=torch.Generator().manual_seed(0))
    return CalibrationWindows(tokens, "random", None, 0)


@pytest.mark.parametrize("method", ["svd-llm", "basis-sharing", "ngc", "svd-llm-v2", "aa-svd", "zs-svd"])
@pytest.mark.parametrize("whitening", ["cholesky", "eigen"])
def test_every_whitening_method_reports_how_it_whitened(method, whitening):
    model = build_tiny_model("llama").eval()
    config = CompressionConfig(method=method, ratio=0.3, whitening=whitening, refine="none")
    result = compress(model, config, calibration())
    for group in result.groups:
        if whitening == "eigen":
            assert group.factorisation == "eigh"
        elif group.factorisation == "eigh":  # a Cholesky factor with rounding-level pivots: the fallback, reported
            assert any(group.id in w and "eigendecomposition" in w for w in result.warnings)
        else:
            assert group.factorisation == "cholesky"
        assert group.condition is not None and 0.0 <= group.condition <= 1.0
    assert result.to_dict()["groups"][0]["condition"] == result.groups[0].condition


def test_plain_svd_reports_no_whitening():
    model = build_tiny_model("llama")
    result = compress(model, CompressionConfig(method="svd", ratio=0.3))
    assert all(g.factorisation is None and g.condition is None for g in result.groups)


def test_eigen_and_cholesky_whitening_give_the_same_svd_llm_model():
    """Both factorise the same C: on well-conditioned statistics the truncations agree."""
    outputs = []
    ids = torch.randint(0, 250, (1, 16), generator=torch.Generator().manual_seed(3))
    for whitening in ("cholesky", "eigen"):
        model = build_tiny_model("qwen2").eval()
        compress(model, CompressionConfig(method="svd-llm", ratio=0.3, whitening=whitening), calibration())
        with torch.no_grad():
            outputs.append(model(input_ids=ids).logits)
    assert torch.allclose(outputs[0], outputs[1], atol=1e-4)
