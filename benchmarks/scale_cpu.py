"""Compress time and peak resident memory of ``ngc compress`` against layer count and width, on this CPU.

Each model is a random-weight Llama-shaped folder of sharded bf16 safetensors (``benchmarks/random_model.py``),
compressed in a fresh process with

    ngc compress FOLDER --method ngc --ratio R --alloc uniform --refine none --sequential-shrink 0.1 \\
        --calib-samples N --calib-len L --out OUT --force --json OUT.json

whose wall time and peak RSS (``os.wait4``) are recorded with the CLI's own timings. Rows are merged into
``--out`` (default ``benchmarks/results/scale_cpu.json``), keyed by model and settings, and a table is printed.

    export OMP_NUM_THREADS=1 NGC_DATA_DIR=/work/shared/data
    python benchmarks/scale_cpu.py --sweep layers --sweep widths      # generates missing folders first
    python benchmarks/scale_cpu.py --sweep big --allow-exceeding-ram  # llama2-7b: float32 weights > RAM
    python benchmarks/scale_cpu.py --folders /tmp/a /tmp/b --out /tmp/scale.json

Sweeps (folders under ``--models-dir``, default /work/scale-models, outside the repository):
``layers`` = llama2-7b proportions at width ``--sweep-width`` (1024) with 2, 4, 8 layers; ``widths`` = widths
1024, 2048, 4096 at 2 layers (intermediate 11008/4096 of the width, head size 128); ``big`` = the full
llama2-7b shape (32 layers, about 13.5 GB in bf16 on disk, about 27 GB in float32).

A model whose weights in the compute dtype exceed this machine's available memory is skipped (and recorded as
such) unless ``--allow-exceeding-ram`` is given: a whole-model load of it would exhaust the memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
import random_model  # noqa: E402  (a sibling script)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "scale_cpu.json"
DEFAULT_MODELS = Path("/work/scale-models")
COMPUTE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelFacts:
    """What a generated folder is, read from its config and shard headers (no weights loaded)."""

    name: str
    folder: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    params: int
    disk_bytes: int  # the safetensors shards as written (bf16)
    float32_bytes: int


def describe(folder: Path) -> ModelFacts:
    config = json.loads((folder / "config.json").read_text())
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{folder} holds no .safetensors file")
    params = 0
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118  (safe_open is not a mapping)
                count = 1
                for size in handle.get_slice(name).get_shape():
                    count *= size
                params += count
    return ModelFacts(
        name=folder.name,
        folder=str(folder),
        layers=config["num_hidden_layers"],
        hidden=config["hidden_size"],
        intermediate=config["intermediate_size"],
        heads=config["num_attention_heads"],
        kv_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
        vocab=config["vocab_size"],
        params=params,
        disk_bytes=sum(shard.stat().st_size for shard in shards),
        float32_bytes=params * 4,
    )


def sweep_shapes(sweep: str, width: int) -> list[tuple[str, random_model.Shape]]:
    """(folder name, shape) of each model of a sweep."""

    def scaled(hidden: int, layers: int) -> random_model.Shape:
        intermediate = round(hidden * 11008 / 4096 / 8) * 8
        return random_model.resolve_shape("llama2-7b", layers=layers, hidden=hidden, intermediate=intermediate)

    if sweep == "layers":
        shapes = [scaled(width, layers) for layers in (2, 4, 8)]
    elif sweep == "widths":
        shapes = [scaled(hidden, 2) for hidden in (1024, 2048, 4096)]
    elif sweep == "big":
        return [("llama2-7b", random_model.SHAPES["llama2-7b"])]
    else:
        raise ValueError(f"unknown sweep {sweep!r}")
    return [(f"llama2-7b-h{s.hidden}-i{s.intermediate}-l{s.layers}", s) for s in shapes]


def ensure_folder(folder: Path, shape: random_model.Shape, tokenizer_source: str) -> Path:
    """Generate ``folder`` unless it already holds a model."""
    if (folder / random_model.INDEX_FILE).is_file():
        return folder
    print(f"generating {folder} ({shape}) ...", flush=True)
    start = time.perf_counter()
    random_model.write_model(folder, shape, random_model.load_tokenizer(tokenizer_source))
    print(f"generated {folder} in {time.perf_counter() - start:.1f} s", flush=True)
    return folder


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def memory_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


def compress_command(folder: Path, out: Path, report: Path, args: argparse.Namespace) -> list[str]:
    command = [
        sys.executable, "-m", "ngc", "compress", str(folder),
        "--method", "ngc", "--ratio", str(args.ratio), "--alloc", "uniform", "--refine", "none",
        "--sequential-shrink", "0.1",
        "--calib-samples", str(args.calib_samples), "--calib-len", str(args.calib_len),
        "--dtype", args.dtype, "--out", str(out), "--force", "--json", str(report),
    ]  # fmt: skip
    if args.save_dtype:
        command += ["--save-dtype", args.save_dtype]
    return command


def run_child(command: list[str], log: Path, timeout: float | None) -> tuple[int, float, int, bool]:
    """Run ``command``; returns (exit code, wall seconds, the child's peak RSS in bytes, timed out)."""
    with log.open("wb") as sink:
        start = time.perf_counter()
        env = os.environ | {"NGC_NO_PROGRESS": "1"}
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if timer:
            timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    return process.returncode, wall, usage.ru_maxrss * 1024, timed_out.is_set()  # Linux reports KiB


def cli_timings(report: dict[str, Any]) -> dict[str, float]:
    """The CLI's own ``*_seconds`` figures (top level and one level down)."""
    timings: dict[str, float] = {}
    for key, value in report.items():
        if key.endswith("_seconds") and isinstance(value, int | float):
            timings[key] = float(value)
        elif isinstance(value, dict):
            timings.update(
                {
                    f"{key}.{k}": float(v)
                    for k, v in value.items()
                    if k.endswith("_seconds") and isinstance(v, int | float)
                }
            )
    return timings


def measure(facts: ModelFacts, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """One row: the model's facts, the settings and what the child process measured."""
    row: dict[str, Any] = asdict(facts) | {
        "ratio": args.ratio,
        "calib_samples": args.calib_samples,
        "calib_len": args.calib_len,
        "dtype": args.dtype,
        "compute_weight_bytes": facts.params * COMPUTE_BYTES[args.dtype],
    }
    row["exceeds_ram"] = row["compute_weight_bytes"] > memory_total()
    if row["compute_weight_bytes"] > available_memory() and not args.allow_exceeding_ram:
        return row | {"status": "skipped: weights in the compute dtype exceed the available memory"}
    out, report, log = scratch / facts.name, scratch / f"{facts.name}.json", scratch / f"{facts.name}.log"
    print(f"compressing {facts.name} ...", flush=True)
    code, wall, peak, timed_out = run_child(compress_command(Path(facts.folder), out, report, args), log, args.timeout)
    row |= {"returncode": code, "wall_seconds": wall, "peak_rss_bytes": peak}
    if code != 0 or not report.is_file():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        status = "timeout" if timed_out else f"failed (exit {code})"
        print(f"{facts.name}: {status}\n" + "\n".join(tail), file=sys.stderr)
        return row | {"status": status, "log_tail": tail}
    timings = cli_timings(json.loads(report.read_text()))
    row |= {
        "status": "ok",
        "seconds_per_layer": wall / facts.layers,
        "cli": timings,
        "checkpoint_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
    }
    if "calibration_seconds" in timings and "fit_seconds" in timings:
        row["calib_fit_seconds_per_layer"] = (timings["calibration_seconds"] + timings["fit_seconds"]) / facts.layers
    shutil.rmtree(out, ignore_errors=True)  # the checkpoint of a random model is of no further use
    return row


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["folder"], row["ratio"], row["calib_samples"], row["calib_len"], row["dtype"])


def merge_rows(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier rows of ``path`` with the same model and settings are replaced by the new ones."""
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    fresh = {row_key(row) for row in rows}
    return [row for row in old if row_key(row) not in fresh] + rows


def machine() -> dict[str, Any]:
    def git(*command: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *command], capture_output=True, text=True).stdout.strip()

    spec = importlib.util.find_spec("ngc")
    source = Path(spec.origin).parent if spec and spec.origin else None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1),
        "memory_total_bytes": memory_total(),
        "torch": torch.__version__,
        "commit": git("rev-parse", "HEAD") or None,
        "ngc_source": str(source),  # the package the child processes import
        "src_modified": bool(git("status", "--porcelain", "src")) if source == REPO / "src" / "ngc" else None,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'model':<30} {'layers':>6} {'hidden':>6} {'inter':>6} {'params':>8} {'disk GB':>8} "
        f"{'fp32 GB':>8} {'wall s':>8} {'s/layer':>8} {'peak RSS GiB':>12}  status"
    )
    print(header)
    for row in rows:
        wall = f"{row['wall_seconds']:.1f}" if "wall_seconds" in row else "-"
        per_layer = f"{row['seconds_per_layer']:.2f}" if "seconds_per_layer" in row else "-"
        peak = f"{row['peak_rss_bytes'] / 2**30:.2f}" if "peak_rss_bytes" in row else "-"
        print(
            f"{row['name']:<30} {row['layers']:>6} {row['hidden']:>6} {row['intermediate']:>6} "
            f"{row['params'] / 1e9:>7.2f}B {row['disk_bytes'] / 1e9:>8.2f} {row['float32_bytes'] / 1e9:>8.2f} "
            f"{wall:>8} {per_layer:>8} {peak:>12}  {row['status']}"
        )


def main(argv: list[str] | None = None) -> None:
    from ngc.atomic import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folders", type=Path, nargs="+", default=[], help="generated model folders to compress")
    parser.add_argument("--sweep", action="append", default=[], choices=["layers", "widths", "big"])
    parser.add_argument("--sweep-width", type=int, default=1024, help="width of the layer sweep")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--tokenizer", default="smollm2-135m", help="for folders the sweeps generate")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-len", type=int, default=512)
    parser.add_argument("--dtype", default="float32", choices=sorted(COMPUTE_BYTES))
    parser.add_argument("--save-dtype", choices=sorted(COMPUTE_BYTES))
    parser.add_argument("--timeout", type=float, help="seconds per model before the child is killed")
    parser.add_argument("--allow-exceeding-ram", action="store_true")
    parser.add_argument(
        "--scratch",
        type=Path,
        help="where checkpoints are written, then removed (default: a temporary folder in --models-dir)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.folders and not args.sweep:
        parser.error("give --folders or at least one --sweep")
    folders = list(args.folders)
    for sweep in args.sweep:
        for name, shape in sweep_shapes(sweep, args.sweep_width):
            folders.append(ensure_folder(args.models_dir / name, shape, args.tokenizer))
    facts = [describe(folder) for folder in folders]
    scratch_parent = args.scratch or args.models_dir
    scratch_parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".scale-cpu-", dir=scratch_parent))
    try:
        rows = [measure(model, args, scratch) for model in facts]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {"machine": machine(), "rows": merge_rows(args.out, rows)})
    print_table(rows)
    print(f"wrote {args.out}")
    if any(row["status"] not in ("ok",) and not row["status"].startswith("skipped") for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
