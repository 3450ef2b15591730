"""``ngc compress --device cuda`` at Llama-2 7B and 70B shapes: time per stage, time per layer, peak GPU memory.

Run on a CUDA machine. Models are random-weight Llama-shaped folders of sharded bf16 safetensors, built on that
machine's disk by ``benchmarks/random_model.py`` (a folder that already holds a model is reused):

- ``7b``: the full Llama-2-7B shape (32 layers, 4096/11008), calibrated on 256 windows x 2048 tokens;
  goal: under 15 min on one H100/H200.
- ``70b``: the Llama-2-70B layer shape (8192/28672, 64 heads, 8 key/value heads) with ``--layers-70b`` of its
  80 layers (default 8: the full model is about 138 GB in bf16, more than a 64 GiB disk). With the
  layer-streamed pipeline, peak memory and time per layer do not depend on the depth; goal: peak GPU memory
  under 40 GB. Time for 80 layers is extrapolated as time per layer x 80 and labelled so.

Usage:
    NGC_DATA_DIR=/path/to/data python benchmarks/gpu_scale.py {7b,70b,all} --models-dir /scratch/models \
        [--out benchmarks/results/gpu_scale.json] [--calib-samples 256] [--calib-len 2048] [--dtype float32]

Each compression is a fresh process running ``ngc compress FOLDER --method ngc --ratio 0.3 --alloc uniform --refine none
--sequential-shrink 0.1 --device cuda``;
that process reports ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` at its exit, and this script
samples the device's used memory with ``nvidia-smi`` (which includes the CUDA context). The compressed
checkpoint is written in bf16 to a scratch folder beside the models, sized, and removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import random_model  # noqa: E402  (a sibling script)
import scale_cpu  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu_scale.json"
GOAL_7B_SECONDS = 15 * 60
GOAL_70B_PEAK_BYTES = 40 * 10**9
FULL_70B_LAYERS = 80


def target_shape(target: str, layers_70b: int) -> tuple[str, random_model.Shape]:
    if target == "7b":
        return "llama2-7b", random_model.SHAPES["llama2-7b"]
    return f"llama2-70b-l{layers_70b}", random_model.resolve_shape("llama2-70b", layers=layers_70b)


def check_disk(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise SystemExit(f"error: {needed / 1e9:.0f} GB needed in {folder}, {free / 1e9:.0f} GB free")


class DeviceMemorySampler:
    """Largest ``memory.used`` of GPU 0 that ``nvidia-smi`` reports while running; None without nvidia-smi."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> int | None:
        try:
            text = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            return int(text.split()[0])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = self._sample()
            if value is not None:
                self.peak_mib = max(value, self.peak_mib or 0)
            self._stop.wait(self.interval)

    def __enter__(self) -> DeviceMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child(peak_file: Path, ngc_args: list[str]) -> None:
    """Run the ngc CLI in this process, then write its peak CUDA memory to ``peak_file``."""
    import torch

    from ngc.cli.main import run

    sys.argv = ["ngc", *ngc_args]
    code: int | str | None = 0
    try:
        run()
    except SystemExit as exit_:
        code = exit_.code
    finally:
        peak = {
            "max_memory_allocated_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
            "max_memory_reserved_bytes": torch.cuda.max_memory_reserved() if torch.cuda.is_available() else None,
        }
        peak_file.write_text(json.dumps(peak) + "\n")
    sys.exit(code)


def measure(target: str, folder: Path, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    facts = scale_cpu.describe(folder)
    out, report, peak_file, log = (scratch / f"{facts.name}{suffix}" for suffix in ("", ".json", ".peak.json", ".log"))
    ngc_args = [
        "compress", str(folder), "--method", "ngc", "--ratio", str(args.ratio),
        "--alloc", "uniform", "--refine", "none", "--sequential-shrink", "0.1",
        "--calib-samples", str(args.calib_samples), "--calib-len", str(args.calib_len),
        "--dtype", args.dtype, "--save-dtype", "bfloat16", "--device", "cuda", "--calib-batch", str(args.calib_batch),
        "--out", str(out), "--force", "--json", str(report),
    ]  # fmt: skip
    command = [sys.executable, __file__, "--child", str(peak_file), "--", *ngc_args]
    print(f"compressing {facts.name} on cuda ...", flush=True)
    with log.open("wb") as sink, DeviceMemorySampler() as sampler:
        start = time.perf_counter()
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=os.environ | {"NGC_NO_PROGRESS": "1"})
        wall = time.perf_counter() - start
    row: dict[str, Any] = {"target": target, **vars(facts)} | {
        "ratio": args.ratio,
        "calib_samples": args.calib_samples,
        "calib_len": args.calib_len,
        "dtype": args.dtype,
        "returncode": code.returncode,
        "wall_seconds": wall,
        "nvidia_smi_peak_used_bytes": sampler.peak_mib * 2**20 if sampler.peak_mib is not None else None,
    }
    if peak_file.is_file():
        row |= json.loads(peak_file.read_text())
    if code.returncode != 0 or not report.is_file():
        row["status"] = f"failed (exit {code.returncode})"
        row["log_tail"] = log.read_text(errors="replace").splitlines()[-20:]
        print("\n".join(row["log_tail"]), file=sys.stderr)
        return row
    timings = scale_cpu.cli_timings(json.loads(report.read_text()))
    staged = timings.get("calibration_seconds", 0.0) + timings.get("fit_seconds", 0.0)
    row |= {
        "status": "ok",
        "cli": timings,
        "other_seconds": wall - staged,  # start-up, load, hashing and save: what the CLI does not time
        "seconds_per_layer": staged / facts.layers,
        "checkpoint_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
    }
    if target == "7b":
        row["goal_under_15_min"] = wall < GOAL_7B_SECONDS
    else:
        row["extrapolated_80_layer_seconds"] = row["seconds_per_layer"] * FULL_70B_LAYERS
        peak = row.get("max_memory_reserved_bytes")
        row["goal_peak_under_40_gb"] = peak is not None and peak < GOAL_70B_PEAK_BYTES
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


def print_row(row: dict[str, Any]) -> None:
    def gb(key: str) -> str:
        value = row.get(key)
        return f"{value / 1e9:.1f} GB" if value is not None else "-"

    print(
        f"{row['name']}: {row['status']}, wall {row['wall_seconds']:.0f} s, "
        f"per layer {row.get('seconds_per_layer', float('nan')):.1f} s, cli {row.get('cli', {})}, "
        f"peak allocated {gb('max_memory_allocated_bytes')}, reserved {gb('max_memory_reserved_bytes')}, "
        f"nvidia-smi {gb('nvidia_smi_peak_used_bytes')}"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        if len(argv) < 3 or argv[2] != "--":
            raise SystemExit("usage: gpu_scale.py --child PEAK.json -- NGC_ARGS...")
        child(Path(argv[1]), argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=["7b", "70b", "all"])
    parser.add_argument("--models-dir", type=Path, required=True, help="where the random models are built")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--layers-70b", type=int, default=8)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--calib-samples", type=int, default=256)
    parser.add_argument("--calib-len", type=int, default=2048)
    parser.add_argument("--calib-batch", type=int, default=8, help="calibration windows per forward on the GPU")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--tokenizer", default="smollm2-135m")
    parser.add_argument("--keep", action="store_true", help="keep the compressed checkpoints")
    args = parser.parse_args(argv)
    from ngc.atomic import write_json_atomic

    targets = ["7b", "70b"] if args.target == "all" else [args.target]
    args.models_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = random_model.load_tokenizer(args.tokenizer)
    rows = []
    for target in targets:
        name, shape = target_shape(target, args.layers_70b)
        folder = args.models_dir / name
        bytes_bf16 = sum(t.nbytes for t in random_model.model_tensors(shape, len(tokenizer)))
        if not (folder / random_model.INDEX_FILE).is_file():
            check_disk(args.models_dir, 2 * bytes_bf16)  # the model and its compressed bf16 copy
            start = time.perf_counter()
            random_model.write_model(folder, shape, tokenizer)
            print(f"built {folder} in {time.perf_counter() - start:.0f} s", flush=True)
        scratch = args.models_dir / f".gpu-scale-{name}"
        scratch.mkdir(exist_ok=True)
        row = measure(target, folder, args, scratch)
        print_row(row)
        rows.append(row)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {"machine": scale_cpu.machine() | {"device": gpu_name()}, "rows": rows})
    print(f"wrote {args.out}")
    if any(row["status"] != "ok" for row in rows):
        sys.exit(1)


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


if __name__ == "__main__":
    main()
