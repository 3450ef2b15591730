"""Layer-by-layer statistics equal those of an ordinary forward pass, for every family."""

from __future__ import annotations

import pytest
import torch

from ngc.calib.collect import stream_layer_moments
from ngc.calib.moments import InputMoments
from ngc.models.tiny import build_tiny_model, tiny_families
from ngc.topology.blocks import find_members


@pytest.mark.parametrize("family", tiny_families())
def test_streamed_moments_equal_a_hooked_full_forward(family):
    model = build_tiny_model(family)
    members = find_members(model)
    windows = torch.randint(0, 250, (3, 40), generator=torch.Generator().manual_seed(0))
    reference: dict[str, InputMoments] = {}
    handles = []
    for member in members:
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
    streamed = {
        key: value
        for _layer, moments in stream_layer_moments(model, windows, members)
        for key, value in moments.items()
    }
    assert streamed.keys() == reference.keys()
    for key, moments in reference.items():
        assert streamed[key].tokens == moments.tokens == 120
        assert torch.allclose(streamed[key].second, moments.second, rtol=1e-5, atol=1e-6), key
        assert torch.allclose(streamed[key].abs_sum, moments.abs_sum, rtol=1e-5, atol=1e-6), key


def test_q_k_v_input_is_recorded_once_per_layer():
    model = build_tiny_model("llama")
    keys = [
        key
        for _layer, moments in stream_layer_moments(model, torch.zeros(1, 8, dtype=torch.long), find_members(model))
        for key in moments
    ]
    assert keys == ["L0:q+k+v", "L0:o", "L0:gate+up", "L0:down", "L1:q+k+v", "L1:o", "L1:gate+up", "L1:down"]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_sequential_stream_without_compression_sees_the_dense_inputs(family):
    from ngc.calib.collect import stream_sequential_moments

    model = build_tiny_model(family)
    members = find_members(model)
    windows = torch.randint(0, 250, (2, 30), generator=torch.Generator().manual_seed(1))
    plain = {k: v for _l, moments in stream_layer_moments(model, windows, members) for k, v in moments.items()}
    staged = list(stream_sequential_moments(model, windows, members))
    assert [key for _l, moments in staged for key in moments] == list(plain)  # one input at a time, in order
    for _layer, moments in staged:
        for key, m in moments.items():
            assert torch.allclose(m.second, plain[key].second, rtol=1e-5, atol=1e-6)
            assert torch.allclose(m.cross, m.second, rtol=1e-5, atol=1e-6)  # nothing compressed: x̃ = x
