"""The packaged SmolLM2 through the layer-sequential pipeline: streamed from its cached folder, compressed in
memory, and by two processes, the same model (marked slow; `make test` runs it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import ngc
from ngc.config import CompressionConfig
from ngc.data.windows import calibration_windows
from ngc.models.load import load_model
from ngc.pipeline.folder import compress_folder
from ngc.settings import data_dir

pytestmark = pytest.mark.slow

# one configuration every path can run: ngc with its streamed, multi-process defaults
CONFIG = CompressionConfig(method="ngc", ratio=0.3, alloc="uniform", refine="none", sequential_shrink=0.1)


@pytest.fixture(scope="module")
def smollm2():
    if data_dir() is None:
        if os.environ.get("CI"):
            pytest.fail("NGC_DATA_DIR not set")
        pytest.skip("NGC_DATA_DIR not set")
    return load_model("smollm2-135m")


def test_streamed_in_memory_and_two_processes_give_one_model(smollm2, tmp_path):
    calibration = calibration_windows(smollm2.tokenizer, "wikitext2", n_windows=4, window_len=128, seed=0)
    probe = calibration.tokens[:1, :64]
    ngc.compress(smollm2.model, CONFIG, calibration)
    with torch.no_grad():
        reference = smollm2.model(input_ids=probe).logits
    compress_folder(smollm2.folder, tmp_path / "streamed", CONFIG, calibration, tokenizer=smollm2.tokenizer)
    streamed = ngc.load(tmp_path / "streamed")
    with torch.no_grad():
        assert torch.equal(streamed(input_ids=probe).logits, reference)

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "ngc", "compress", "smollm2-135m", "--method", "ngc", "--ratio", "0.3"]
    command += ["--alloc", "uniform", "--refine", "none", "--sequential-shrink", "0.1"]
    command += ["--calib-samples", "4", "--calib-len", "128", "--out", str(tmp_path / "two")]
    env = os.environ | {"OMP_NUM_THREADS": "1", "NGC_NO_PROGRESS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    two = ngc.load(tmp_path / "two")
    with torch.no_grad():
        torch.testing.assert_close(two(input_ids=probe).logits, reference, rtol=1e-4, atol=1e-4)
