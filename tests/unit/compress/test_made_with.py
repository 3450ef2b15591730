"""A stored result is reused only when its configuration is what its label gives today."""

from __future__ import annotations

from ngc.config import CompressionConfig, made_with


def stored(**fields) -> dict:
    return CompressionConfig(**fields).to_dict()


def test_the_fields_a_label_sets_and_its_ratio_must_match():
    config = stored(method="ngc", topology="intra", ratio=0.3)
    assert made_with(config, {"method": "ngc", "topology": "intra"}, 0.3)
    assert not made_with(config, {"method": "ngc", "topology": "intra-cross-2"}, 0.3)
    assert not made_with(config, {"method": "ngc", "topology": "intra"}, 0.2)


def test_a_result_made_under_other_method_defaults_is_another_result():
    earlier = {**stored(method="ngc", ratio=0.3), "sequential_shrink": 0.1, "refine": "none"}
    assert not made_with(earlier, {"method": "ngc"}, 0.3)
    assert made_with(earlier, {"method": "ngc", "sequential_shrink": 0.1, "refine": "none"}, 0.3)


def test_fields_a_result_predates_and_the_ridge_of_an_update_that_does_not_run_are_not_compared():
    old = stored(method="ngc", ratio=0.3, sequential=False, refine="none")
    del old["whitening"]
    old["sequential_shrink"] = 0.0
    assert made_with(old, {"method": "ngc", "sequential": False, "refine": "none"}, 0.3)
    assert not made_with(old, {"method": "ngc", "sequential": False, "refine": "none", "sequential_shrink": 1.0}, 0.3)


def test_the_floor_is_compared_only_for_an_allocation_that_has_one():
    uniform = stored(method="ngc", ratio=0.5, alloc="uniform", alloc_floor=0.0)
    assert made_with(uniform, {"method": "ngc", "alloc": "uniform"}, 0.5)  # today's 0.5 floor would not act
    unfloored = stored(method="ngc", ratio=0.5, alloc="loss", alloc_floor=0.0)
    assert not made_with(unfloored, {"method": "ngc", "alloc": "loss"}, 0.5)  # today's default floors it
    assert made_with(unfloored, {"method": "ngc", "alloc": "loss", "alloc_floor": 0.0}, 0.5)
