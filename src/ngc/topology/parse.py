"""User-written topologies (SPEC §2): a family name, per-layer/per-type rules, or a YAML file of explicit groups.

Rules: ``SELECTOR=FAMILY`` separated by ``;``. A selector is roles (``q,k,v``, ``gate,up``, ``all``) and
optionally ``@layers`` (``0-9``, ``3``, ``0-3,8``). The first rule that matches a block decides; blocks no rule
matches stay per-matrix; a rule that matches no block, or names a layer the model lacks, is an error.
Example: ``q,k,v@0-15=intra-cross-2; gate,up=intra; o,down=per-matrix``.

YAML (a path ending in .yaml/.yml)::

    groups:                      # explicit groups, by module path (module:role for fused modules)
      - [<path of layer 0's q module>, <path of layer 1's q module>]
    rules: "gate,up=intra"       # optional, for blocks not in an explicit group
    default: per-matrix          # optional, for the rest
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

from ngc.arch import ROLES
from ngc.errors import UsageError
from ngc.topology.blocks import Member
from ngc.topology.groups import Group, family_groups

_LAYERS = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


Layers = tuple[tuple[int, int], ...]  # inclusive (first, last) ranges


def _layers(text: str, rule: str) -> Layers:
    if not _LAYERS.match(text):
        raise UsageError(f"bad layer list {text!r} in rule {rule!r}", hint="write layers like 0-9 or 3 or 0-3,8")
    ranges = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if first > last:
            raise UsageError(f"layer range {part!r} in rule {rule!r} runs backwards", hint=f"write {last}-{first}")
        ranges.append((first, last))
    return tuple(ranges)


def _rule(rule: str) -> tuple[set[str], Layers | None, str]:
    selector, eq, family = rule.partition("=")
    if not eq or not family.strip():
        raise UsageError(f"rule {rule!r} has no '=FAMILY'", hint="write rules like q,k,v=intra; o,down=per-matrix")
    roles_text, _, layers_text = selector.strip().partition("@")
    names = [r.strip() for r in roles_text.split(",") if r.strip()]
    roles = set(ROLES) if names == ["all"] else set(names)
    unknown = sorted(roles - set(ROLES))
    if unknown or not roles:
        raise UsageError(f"unknown role(s) {unknown or names} in rule {rule!r}", hint=f"roles: {', '.join(ROLES)}, all")
    return roles, (_layers(layers_text.strip(), rule) if layers_text.strip() else None), family.strip()


def _check_layers(rule: str, layers: Layers | None, n_layers: int) -> None:
    """Refuse layers the model does not have (a range is checked by its ends, never expanded)."""
    beyond = [last for _first, last in layers or () if last >= n_layers]
    if beyond:
        raise UsageError(
            f"rule {rule.strip()!r} names layer {max(beyond)}, but the model has {n_layers} layers",
            hint=f"layers are numbered 0-{n_layers - 1}",
        )


def _matches(member: Member, roles: set[str], layers: Layers | None) -> bool:
    in_layers = layers is None or any(first <= member.layer <= last for first, last in layers)
    return member.role in roles and in_layers


def _refuse_idle_rule(rule: str, roles: set[str], layers: Layers | None, members: Sequence[Member]) -> None:
    """A rule that takes no block is a mistake the user should hear about, never a silent no-op."""
    if any(_matches(m, roles, layers) for m in members):
        reason = "every block it selects is taken by an earlier rule"
        hint = "reorder the rules (the first matching rule decides) or remove this one"
    else:
        present = sorted({m.role for m in members}, key=ROLES.index)
        reason = "it selects no block"
        hint = f"the blocks being compressed have roles {', '.join(present)} (see --roles)"
    raise UsageError(f"topology rule {rule.strip()!r} matches nothing: {reason}", hint=hint)


def apply_rules(rules: str, members: Sequence[Member], n_layers: int | None = None) -> tuple[list[Group], list[Member]]:
    """Groups from ``rules``, and the members no rule matched. A rule that matches nothing is an error.

    ``n_layers`` is the model's layer count (default: one past the highest layer among ``members``).
    """
    texts = [r for r in rules.split(";") if r.strip()]
    parsed = [_rule(r) for r in texts]
    if n_layers is None:
        n_layers = max((m.layer for m in members), default=-1) + 1
    for text, (_roles, layers, _family) in zip(texts, parsed, strict=True):
        _check_layers(text, layers, n_layers)
    assigned: dict[int, list[Member]] = {}
    rest: list[Member] = []
    for member in members:
        for index, (roles, layers, _family) in enumerate(parsed):
            if _matches(member, roles, layers):
                assigned.setdefault(index, []).append(member)
                break
        else:
            rest.append(member)
    for index, (text, (roles, layers, _family)) in enumerate(zip(texts, parsed, strict=True)):
        if index not in assigned:
            _refuse_idle_rule(text, roles, layers, members)
    groups = [g for index, chosen in sorted(assigned.items()) for g in family_groups(parsed[index][2], chosen)]
    return groups, rest


def _member_names(members: Sequence[Member]) -> dict[str, Member]:
    counts: dict[str, int] = {}
    for member in members:
        counts[member.module] = counts.get(member.module, 0) + 1
    names = {f"{m.module}:{m.role}": m for m in members}
    names.update({m.module: m for m in members if counts[m.module] == 1})
    return names


def explicit_groups(spec: list, members: Sequence[Member]) -> list[Group]:
    names = _member_names(members)
    groups = []
    for entry in spec:
        if not isinstance(entry, list) or not entry:
            raise UsageError(f"a group must be a non-empty list of block names, got {entry!r}")
        unknown = [name for name in entry if name not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(names), n=3)
            raise UsageError(
                f"unknown block name(s) {unknown[:3]}",
                hint=(f"did you mean {', '.join(close)}? " if close else "")
                + f"there are {len(names)} valid names; `ngc compress MODEL --dry-run` lists the blocks",
            )
        groups.append(Group(tuple(names[name] for name in entry)))
    return groups


def parse_topology(text: str, members: Sequence[Member]) -> tuple[Group, ...]:
    """Groups for ``text``: a family name, rules (contains ``=``), or a YAML file."""
    text = text.strip()
    if text.endswith((".yaml", ".yml")):
        return _from_yaml(Path(text), members)
    if "=" in text:
        groups, rest = apply_rules(text, members)
        return tuple(groups) + family_groups("per-matrix", rest)
    return family_groups(text, members)


def _from_yaml(path: Path, members: Sequence[Member]) -> tuple[Group, ...]:
    import yaml

    if not path.is_file():
        raise UsageError(f"topology file {path} does not exist", hint="give a YAML file with a 'groups' list")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"topology file {path} is not valid YAML: {exc}") from exc
    if not isinstance(spec, dict) or set(spec) - {"groups", "rules", "default"}:
        raise UsageError(f"topology file {path} must be a mapping with keys groups, rules, default")
    groups = explicit_groups(spec.get("groups") or [], members)
    taken = {m for g in groups for m in g.members}
    rest = [m for m in members if m not in taken]
    if spec.get("rules"):
        ruled, rest = apply_rules(str(spec["rules"]), rest, max((m.layer for m in members), default=-1) + 1)
        groups += ruled
    groups += family_groups(str(spec.get("default", "per-matrix")), rest)
    return tuple(groups)
