"""``auto`` topology (SPEC §2): per pair of adjacent layers and per input (q+k+v, o, gate+up, down), the structure
with the lowest calibration loss for its parameters.

Candidates for a unit (the members of layers 2j and 2j+1 that read one kind of input): ``per-matrix``,
``intra`` (members of one layer share), ``cross-2`` (one role shared by both layers) and ``intra-cross-2`` (the
whole unit shares). Under uniform allocation every candidate keeps the same parameters, so the unit takes the
candidate whose fitted groups give the least output error; the scoring is passed in (it needs the fitter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ngc.topology.blocks import Member
from ngc.topology.groups import Group, family_groups

CANDIDATES = ("per-matrix", "intra", "cross-2", "intra-cross-2")


def units(members: Sequence[Member], span: int = 2) -> list[list[Member]]:
    """Members split by (input kind, layer // span), in member order."""
    buckets: dict[tuple[str, int], list[Member]] = {}
    for member in members:
        buckets.setdefault((member.input_key.split(":", 1)[1], member.layer // span), []).append(member)
    return list(buckets.values())


def choose(
    members: Sequence[Member], score: Callable[[tuple[Group, ...]], float]
) -> tuple[tuple[Group, ...], dict[str, str]]:
    """The groups of the best candidate of every unit, and which candidate each unit took (by its first member)."""
    chosen: list[Group] = []
    decisions: dict[str, str] = {}
    for unit in units(members):
        options = {name: family_groups(name, unit) for name in CANDIDATES}
        best = min(options, key=lambda name: score(options[name]))
        chosen.extend(options[best])
        decisions[f"L{unit[0].layer}-{unit[-1].layer}:{unit[0].input_key.split(':', 1)[1]}"] = best
    return tuple(chosen), decisions
