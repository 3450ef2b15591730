"""Cost of one distillation step (SPEC §5) in dense forward passes of the same window, on this machine.

One process, one thread (``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``, both recorded). Costs are this
process's CPU seconds (``time.process_time``; with one thread, what the arithmetic took, even when other jobs share
the cores), and wall seconds beside them. The dense model
is loaded once and compressed by a copy (the factor structure sets the cost, not the fit, so a small calibration
is the default; a saved checkpoint can be given instead). Measured, each as the median of ``--steps`` steps after
one warm-up step, with the dense forward of the same window (no grad, no KV cache) measured before and after:

- ``on_the_fly``: ``ngc.refine.distill`` with the teacher run for every window (no teacher cache);
- ``cached``: the same with the teacher's final hidden states kept (a window seen again, as in a second epoch);
- ``no_message_scope``: ``cached`` with every shared basis computing its message per member (scopes off);
- ``naive``: whole logits, KL over the whole window, unfused Adam, the teacher's full forward every step
  (the implementation this benchmark replaced), for comparison.

    OMP_NUM_THREADS=1 python benchmarks/distill_step.py --out benchmarks/results/distill_step_smollm2.json
    OMP_NUM_THREADS=1 python benchmarks/distill_step.py --model tests-tiny --window 64 --steps 2 \\
        --out /tmp/distill_step.json   # smoke test, seconds
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ngc.api import compress
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.modules.factorized import _MessageScope
from ngc.refine.distill import distill, factor_parameters, kl_to_teacher
from ngc.refine.options import DistillOptions

TINY = "tests-tiny"
VARIANTS = ("on_the_fly", "cached", "no_message_scope", "naive")


def load_dense(name: str) -> torch.nn.Module:
    if name == TINY:
        from ngc.models.tiny import build_tiny_model

        return build_tiny_model("llama").eval()
    from ngc.models.load import load_model

    return load_model(name).model.eval()


def vocab_size(model: torch.nn.Module) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def compressed_copy(dense: torch.nn.Module, args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    student = copy.deepcopy(dense)
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab_size(dense), (args.calib_samples, args.calib_len), generator=generator)
    config = CompressionConfig(method=args.method, ratio=args.ratio, sequential=False, alloc="uniform", refine="none")
    result = compress(student, config, CalibrationWindows(ids, "random tokens", None, args.seed))
    return student.eval(), {
        "method": args.method,
        "ratio": args.ratio,
        "ratio_removed": result.accounting.ratio_removed,
        "calibration": f"{args.calib_samples} x {args.calib_len} random tokens (cost depends on structure, not fit)",
    }


def dense_forward_seconds(dense: torch.nn.Module, window: torch.Tensor, repeats: int) -> list[tuple[float, float]]:
    """(CPU, wall) seconds of each dense forward of ``window`` (no grad, no KV cache)."""
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            dense(input_ids=window, use_cache=False)
            times.append((time.process_time() - start_cpu, time.perf_counter() - start))
    return times


def message_scopes(model: torch.nn.Module, enabled: bool, saved: dict[int, tuple]) -> None:
    """Switch every message scope off (remembering its bases) or back on."""
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, _MessageScope):
                if enabled:
                    hook.bases = saved.pop(id(hook), hook.bases)
                else:
                    saved[id(hook)] = hook.bases
                    hook.bases = ()


def distill_steps(student, teacher, window: torch.Tensor, steps: int, cache: bool) -> list[tuple[float, float]]:
    """(CPU, wall) seconds of each step after the first (warm-up), on one window repeated."""
    params = factor_parameters(student)
    before = [p.detach().clone() for p in params]
    options = DistillOptions(steps=steps + 1, lr=1e-4, warmup=0.0, teacher_cache_bytes=2**31 if cache else 0)
    report = distill(student, teacher, window, options)
    with torch.no_grad():
        for p, value in zip(params, before, strict=True):
            p.copy_(value)
    return list(zip(report.step_cpu_seconds, report.step_seconds, strict=True))[1:]


def naive_steps(student, teacher, window: torch.Tensor, steps: int) -> list[float]:
    """The replaced implementation: whole logits, whole-window KL, unfused per-tensor Adam, teacher every step."""
    params = factor_parameters(student)
    before = [p.detach().clone() for p in params]
    frozen = {p: p.requires_grad for p in student.parameters()}
    for p in student.parameters():
        p.requires_grad_(p in set(params))
    optimizer = torch.optim.Adam([{"params": [p], "lr": 1e-7} for p in params])
    times = []
    for _ in range(steps + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            target = teacher(input_ids=window).logits
        loss = kl_to_teacher(student(input_ids=window).logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append((time.process_time() - start_cpu, time.perf_counter() - start))
    with torch.no_grad():
        for p, value in zip(params, before, strict=True):
            p.copy_(value)
    for p, flag in frozen.items():
        p.requires_grad_(flag)
    return times[1:]


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    dense = load_dense(args.model)
    student, setup = compressed_copy(dense, args)
    generator = torch.Generator().manual_seed(args.seed + 1)
    window = torch.randint(0, vocab_size(dense), (args.batch, args.window), generator=generator)
    forward = dense_forward_seconds(dense, window, args.forward_repeats)
    steps: dict[str, list[tuple[float, float]]] = {}
    for variant in args.variants:
        if variant == "naive":
            steps[variant] = naive_steps(student, dense, window, args.steps)
        elif variant == "no_message_scope":
            saved: dict[int, tuple] = {}
            message_scopes(student, False, saved)
            steps[variant] = distill_steps(student, dense, window, args.steps, cache=True)
            message_scopes(student, True, saved)
        else:
            steps[variant] = distill_steps(student, dense, window, args.steps, cache=variant == "cached")
        forward += dense_forward_seconds(dense, window, args.forward_repeats)
    dense_cpu = statistics.median(cpu for cpu, _ in forward)
    dense_wall = statistics.median(wall for _, wall in forward)
    return {
        "settings": vars(args) | {"variants": list(args.variants)},
        "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.get_num_threads()},
        "load_average_at_end": os.getloadavg(),
        "torch": torch.__version__,
        "model": setup,
        "window": {"batch": args.batch, "tokens": args.window, "content": "seeded random token ids"},
        "dense_forward": {
            "cpu_seconds": [c for c, _ in forward],
            "wall_seconds": [w for _, w in forward],
            "median_cpu_seconds": dense_cpu,
            "median_wall_seconds": dense_wall,
        },
        "steps": {
            name: {
                "cpu_seconds": [c for c, _ in times],
                "wall_seconds": [w for _, w in times],
                "median_cpu_seconds": statistics.median(c for c, _ in times),
                "dense_forwards": statistics.median(c for c, _ in times) / dense_cpu,
                "dense_forwards_wall": statistics.median(w for _, w in times) / dense_wall,
            }
            for name, times in steps.items()
        },
        "target": "one step of one 512-token window <= 5 dense forward passes of that window",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help=f"packaged alias or folder, or {TINY}")
    parser.add_argument("--method", default="ngc")
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--window", type=int, default=512, help="tokens per window")
    parser.add_argument("--batch", type=int, default=1, help="windows per step")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per variant (after one warm-up)")
    parser.add_argument("--forward-repeats", type=int, default=3, help="dense forwards before and after each variant")
    parser.add_argument("--variants", type=lambda s: tuple(s.split(",")), default=VARIANTS)
    parser.add_argument("--calib-samples", type=int, default=2)
    parser.add_argument("--calib-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    payload = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    for name, row in payload["steps"].items():
        print(
            f"{name}: {row['median_cpu_seconds']:.3f} CPU s per step = {row['dense_forwards']:.2f} dense forwards "
            f"({row['dense_forwards_wall']:.2f} by wall clock)"
        )
    print(f"dense forward {payload['dense_forward']['median_cpu_seconds']:.3f} CPU s; wrote {args.out}")


if __name__ == "__main__":
    main()
