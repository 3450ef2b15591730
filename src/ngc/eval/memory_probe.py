"""Peak memory of a fresh process that loads one model and runs one prefill (CPU peak memory for ``ngc bench``).

Run as ``python -m ngc.eval.memory_probe MODEL --dtype float32 --batch 4 --len 512``; ``-`` as MODEL loads
nothing (the interpreter, torch and transformers alone). Prints the peak resident set size in bytes while the
prefill runs: the high-water mark is reset after loading (Linux), so what loading alone needed (a checkpoint is
built dense, then factorised) is left out. A fresh process is used because the peak is per process.
"""

from __future__ import annotations

import argparse
import gc
import resource
import subprocess
import sys
from pathlib import Path

from ngc.errors import NgcError

STATUS = Path("/proc/self/status")


def peak_rss_bytes() -> int:
    """This process' peak resident set size since the last reset.

    Linux: ``VmHWM`` of /proc/self/status (``ru_maxrss`` would carry the parent's peak over fork and exec).
    Elsewhere: ``ru_maxrss`` (bytes on macOS).
    """
    if STATUS.is_file():
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak() -> None:
    """Start the high-water mark again from the current resident size (Linux >= 4.0; elsewhere a no-op)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def probe(model: str, dtype: str, batch: int, length: int, cache: Path | None) -> int:
    """Peak RSS of a child process that loads ``model`` and runs one ``batch x length`` prefill."""
    command = [sys.executable, "-m", "ngc.eval.memory_probe", model, "--dtype", dtype]
    command += ["--batch", str(batch), "--len", str(length)]
    if cache is not None:
        command += ["--cache-dir", str(cache)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NgcError(f"the memory probe of {model} failed: {done.stderr.strip().splitlines()[-1:]}")
    return int(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--len", type=int, default=128)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    import torch
    import transformers  # noqa: F401  (the baseline includes what every probe imports)

    if args.model != "-":
        from ngc.checkpoint.load import load_any
        from ngc.eval.speed import prefill_once, random_ids

        loaded = load_any(args.model, dtype=args.dtype, cache=args.cache_dir)
        ids = random_ids(loaded.model.config.vocab_size, args.batch, args.len, torch.device("cpu"))
        gc.collect()
        reset_peak()
        prefill_once(loaded.model, ids)
    print(peak_rss_bytes())


if __name__ == "__main__":
    main()
