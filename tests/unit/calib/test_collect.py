"""Layer-by-layer statistics equal those of an ordinary forward pass, for every family."""

from __future__ import annotations

import pytest
import torch

from ngc.calib.moments import InputMoments
from ngc.models.tiny import build_tiny_model, tiny_families
from ngc.pipeline.calibrate import calibrate_sequential
from ngc.pipeline.distributed import World
from ngc.pipeline.run import PipelineOptions, by_layer, collect_moments, record_streams
from ngc.pipeline.source import ModelSource, layer_prefix
from ngc.topology.blocks import find_members


def hooked_full_forward(model, windows: torch.Tensor) -> dict[str, InputMoments]:
    """The reference: moments recorded by hooks during ordinary forward passes of the whole model."""
    reference: dict[str, InputMoments] = {}
    handles = []
    for member in find_members(model):
        if member.input_key in reference:
            continue
        moments = reference[member.input_key] = InputMoments(member.n)
        handles.append(
            model.get_submodule(member.module).register_forward_pre_hook(lambda _m, args, s=moments: s.add(args[0]))
        )
    with torch.no_grad():
        for row in windows:
            model(input_ids=row.unsqueeze(0))
    for handle in handles:
        handle.remove()
    return reference


def streamed(model, windows: torch.Tensor, **options) -> dict[str, InputMoments]:
    return collect_moments(ModelSource(model, "cpu"), find_members(model), windows, PipelineOptions(**options), World())


def assert_same(streamed_moments, reference, tokens: int) -> None:
    assert streamed_moments.keys() == reference.keys()
    for key, moments in reference.items():
        assert streamed_moments[key].tokens == moments.tokens == tokens
        assert torch.allclose(streamed_moments[key].second, moments.second, rtol=1e-5, atol=1e-6), key
        assert torch.allclose(streamed_moments[key].abs_sum, moments.abs_sum, rtol=1e-5, atol=1e-6), key


@pytest.mark.parametrize("family", tiny_families())
def test_streamed_moments_equal_a_hooked_full_forward(family):
    model = build_tiny_model(family)
    windows = torch.randint(0, 250, (3, 40), generator=torch.Generator().manual_seed(0))
    assert_same(streamed(model, windows), hooked_full_forward(model, windows), 120)


def test_gpt2_with_eager_attention_keeps_its_positional_causal_mask():
    """GPT-2 hands its blocks the causal mask by position; dropping it would calibrate without causality."""
    model = build_tiny_model("gpt2")
    model.config._attn_implementation = "eager"
    model.set_attn_implementation("eager")
    windows = torch.randint(0, 250, (2, 32), generator=torch.Generator().manual_seed(3))
    reference = hooked_full_forward(model, windows)
    assert_same(streamed(model, windows), reference, 64)


def test_batched_calibration_gives_the_same_moments():
    model = build_tiny_model("llama")
    windows = torch.randint(0, 250, (5, 24), generator=torch.Generator().manual_seed(2))
    one, batched = streamed(model, windows), streamed(model, windows, batch_size=2)
    for key in one:
        torch.testing.assert_close(batched[key].second, one[key].second, rtol=1e-10, atol=1e-9)


def test_float32_products_stay_within_float32_rounding_of_float64():
    model = build_tiny_model("qwen2")
    windows = torch.randint(0, 250, (4, 64), generator=torch.Generator().manual_seed(4))
    exact, fast = streamed(model, windows), streamed(model, windows, precision="float32")
    for key in exact:
        error = (fast[key].second - exact[key].second).norm() / exact[key].second.norm()
        assert 0 < error < 1e-6, key  # float32 rounding (~6e-8 per product), summed per batch in float64
        assert fast[key].second.dtype == torch.float64


def test_q_k_v_input_is_recorded_once_per_layer():
    model = build_tiny_model("llama")
    keys = list(streamed(model, torch.zeros(1, 8, dtype=torch.long)))
    assert keys == ["L0:q+k+v", "L0:o", "L0:gate+up", "L0:down", "L1:q+k+v", "L1:o", "L1:gate+up", "L1:down"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_sequential_stream_without_compression_sees_the_dense_inputs(family):
    model = build_tiny_model(family)
    members = find_members(model)
    windows = torch.randint(0, 250, (2, 30), generator=torch.Generator().manual_seed(1))
    plain = streamed(model, windows)
    options = PipelineOptions()
    streams = record_streams(model, windows, options, sequential=True)
    staged: list[str] = []

    def check(moments: dict[str, InputMoments]) -> None:
        for key, m in moments.items():
            staged.append(key)
            assert torch.allclose(m.second, plain[key].second, rtol=1e-5, atol=1e-6)
            assert torch.allclose(m.cross, m.second, rtol=1e-5, atol=1e-6)  # nothing compressed: x̃ = x

    source = ModelSource(model, "cpu")
    for index, here in by_layer(members).items():
        layer = source.onload(index)
        calibrate_sequential(layer, index, layer_prefix(model, index), here, streams, options.stats(), World(), check)
    assert staged == list(plain)  # one input at a time, in the order the layers read them
