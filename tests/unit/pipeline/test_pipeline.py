"""The layer-sequential pipeline: a folder streamed from its shards gives the model compressed in memory, one
layer in memory at a time; several processes give the single-process result; damaged folders are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import ngc
from ngc.api import compress
from ngc.config import CompressionConfig
from ngc.errors import ModelNotFoundError
from ngc.models.tiny import save_tiny_model, tiny_families
from ngc.pipeline import source as source_module
from ngc.pipeline.folder import compress_folder
from ngc.pipeline.source import FolderSource

WINDOWS = torch.randint(0, 250, (3, 24), generator=torch.Generator().manual_seed(0))
PROBE = torch.randint(0, 250, (1, 16), generator=torch.Generator().manual_seed(5))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=PROBE).logits


def in_memory(folder: Path, config: CompressionConfig):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    compress(model, config, WINDOWS)
    return model


@pytest.mark.parametrize("family", tiny_families())
def test_a_streamed_folder_gives_the_model_compressed_in_memory(family, tmp_path):
    folder = save_tiny_model(family, tmp_path / "dense")
    config = CompressionConfig(method="ngc", ratio=0.3, alloc="uniform")  # ngc's streamed defaults
    result = compress_folder(folder, tmp_path / "ckpt", config, WINDOWS)
    reference = in_memory(folder, config)
    assert torch.equal(logits(ngc.load(tmp_path / "ckpt")), logits(reference))
    assert result.pipeline["source"] == "folder"
    assert result.accounting.ratio_removed == reference.ngc_compression.accounting.ratio_removed
    assert result.base_model["weights_sha256"] == reference.ngc_compression.base_model["weights_sha256"]


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "aa-svd"},  # anchored to the dense stream, then block steps on the compressed one
        {"method": "ngc", "alloc": "uniform", "refine": "block", "sequential_shrink": 1.0},
        {"method": "svd-llm-v2", "alloc": "uniform"},  # eigendecomposition whitening
    ],
)
def test_two_stream_methods_give_the_in_memory_model_when_streamed(fields, tmp_path):
    folder = save_tiny_model("llama", tmp_path / "dense")
    config = CompressionConfig(ratio=0.3, **fields)
    compress_folder(folder, tmp_path / "ckpt", config, WINDOWS)
    assert torch.equal(logits(ngc.load(tmp_path / "ckpt")), logits(in_memory(folder, config)))


@pytest.mark.parametrize("method, most_in_flight", [("svd-llm", 1), ("basis-sharing", 2)])
def test_a_streamed_folder_holds_only_the_layers_in_flight(method, most_in_flight, tmp_path, monkeypatch):
    folder = save_tiny_model("llama", tmp_path / "dense")
    resident: list[int] = []

    def count(source: FolderSource) -> int:
        layers = source.model.model.layers
        return sum(any(p.device.type != "meta" for p in layer.parameters()) for layer in layers)

    onload = FolderSource.onload

    def watched(self, index):
        layer = onload(self, index)
        resident.append(count(self))
        return layer

    monkeypatch.setattr(FolderSource, "onload", watched)
    config = CompressionConfig(method=method, ratio=0.3)
    compress_folder(folder, tmp_path / "ckpt", config, WINDOWS)
    assert max(resident) == most_in_flight  # a cross-layer group keeps its first layer until its last has run
    assert torch.equal(logits(ngc.load(tmp_path / "ckpt")), logits(in_memory(folder, config)))


def test_the_checkpoint_is_sharded_when_layers_exceed_a_shard(tmp_path):
    folder = save_tiny_model("qwen2", tmp_path / "dense")
    config = CompressionConfig(method="svd-llm", ratio=0.3)
    compress_folder(folder, tmp_path / "ckpt", config, WINDOWS, max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert torch.equal(logits(ngc.load(tmp_path / "ckpt")), logits(in_memory(folder, config)))


def sharded_copy(folder: Path, out: Path) -> Path:
    """The same model as two shards with an index, as large models come."""
    out.mkdir()
    for name in os.listdir(folder):
        if name != "model.safetensors":
            (out / name).write_bytes((folder / name).read_bytes())
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, out / file)
    weight_map = {n: file for file, part in halves.items() for n in part}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


def test_a_sharded_source_gives_the_single_file_result(tmp_path):
    folder = save_tiny_model("gpt2", tmp_path / "dense")
    sharded = sharded_copy(folder, tmp_path / "sharded")
    config = CompressionConfig(method="ngc", ratio=0.4, alloc="uniform")
    compress_folder(folder, tmp_path / "a", config, WINDOWS)
    compress_folder(sharded, tmp_path / "b", config, WINDOWS)
    assert torch.equal(logits(ngc.load(tmp_path / "a")), logits(ngc.load(tmp_path / "b")))


def test_damaged_folders_are_refused_with_the_reason(tmp_path):
    folder = sharded_copy(save_tiny_model("llama", tmp_path / "dense"), tmp_path / "sharded")
    second = folder / "model-00002-of-00002.safetensors"
    data = second.read_bytes()
    second.unlink()
    with pytest.raises(ModelNotFoundError, match="names shard"):
        FolderSource(folder, dtype=torch.float32, device="cpu")
    second.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ModelNotFoundError, match="cannot be read"):
        FolderSource(folder, dtype=torch.float32, device="cpu").onload(0)
    second.write_bytes(data)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"intermediate_size": 96}))
    with pytest.raises(ModelNotFoundError, match="shape"):
        source = FolderSource(folder, dtype=torch.float32, device="cpu")
        source.onload(0)
    (folder / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 3}))
    with pytest.raises(ModelNotFoundError, match="not in the weights"):
        FolderSource(folder, dtype=torch.float32, device="cpu")
    (folder / "model.safetensors.index.json").unlink()
    with pytest.raises(ModelNotFoundError, match="neither"):
        source_module.read_index(folder)


def test_streamed_hash_equals_the_hash_of_the_whole_model(tmp_path):
    folder = save_tiny_model("opt", tmp_path / "dense")
    source = FolderSource(folder, dtype=torch.float32, device="cpu")
    for index in range(2):
        source.onload(index)
    whole = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert source.base_sha256() == source_module.WeightsDigest.of_model(whole)


def run_cli(*args: str, launcher: list[str] | None = None) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "NGC_NO_PROGRESS": "1"}
    command = [sys.executable, *(launcher or []), "-m", "ngc", "compress", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("method", ["ngc", "basis-sharing"])
def test_two_processes_give_the_single_process_result(method, tmp_path):
    folder = save_tiny_model("llama", tmp_path / "dense")
    text = tmp_path / "calib.txt"
    words = torch.randint(0, 26, (3000,), generator=torch.Generator().manual_seed(0))
    text.write_text(" ".join(chr(97 + int(i)) * (1 + int(i) % 5) for i in words))
    args = [str(folder), "--method", method, "--ratio", "0.3", "--calib", str(text), "--calib-samples", "8"]
    args += ["--calib-len", "64"]
    if method == "ngc":  # the same configuration in both runs (one process would otherwise add block refinement)
        args += ["--alloc", "uniform", "--refine", "none"]
    run_cli(*args, "--out", str(tmp_path / "one"))
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run_cli(*args, "--out", str(tmp_path / "two"), launcher=torchrun)
    one, two = ngc.load(tmp_path / "one"), ngc.load(tmp_path / "two")
    torch.testing.assert_close(logits(two), logits(one), rtol=1e-5, atol=1e-5)
    manifest = json.loads((tmp_path / "two" / "ngc.json").read_text())
    assert manifest["calibration"]["world_size"] == 2
    assert json.loads((tmp_path / "one" / "ngc.json").read_text())["calibration"]["world_size"] == 1


AGREE = """
import os, sys
from ngc.pipeline.distributed import init_world
from ngc.errors import UsageError
world = init_world("cpu")
try:
    world.agree("arguments", {"ratio": 0.3 if world.rank == 0 else 0.4})
except UsageError as error:
    print("refused:", error)
    sys.exit(3)
"""


def test_ranks_started_with_different_arguments_are_refused(tmp_path):
    script = tmp_path / "agree.py"
    script.write_text(AGREE)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run([*command, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "started with different arguments" in done.stdout


def test_a_layer_that_does_not_fit_on_the_device_is_one_clear_error(tmp_path, monkeypatch):
    from ngc.errors import NgcError

    folder = save_tiny_model("llama", tmp_path / "dense")

    def no_room(self, index):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(FolderSource, "onload", no_room)
    with pytest.raises(NgcError, match="layer 0 with its calibration batch does not fit") as error:
        compress_folder(folder, tmp_path / "ckpt", CompressionConfig(method="svd-llm", ratio=0.3), WINDOWS)
    assert "--calib-batch 1" in error.value.hint
    assert not (tmp_path / "ckpt").exists()  # nothing partial where the checkpoint is expected


def test_a_terminated_compress_leaves_no_temporary_folder(tmp_path):
    import signal
    import time

    folder = save_tiny_model("llama", tmp_path / "dense")
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"w{i % 997}" for i in range(60000)))
    out = tmp_path / "runs" / "ckpt"
    command = [sys.executable, "-m", "ngc", "compress", str(folder), "--method", "ngc", "--ratio", "0.3"]
    command += ["--calib", str(text), "--calib-samples", "256", "--calib-len", "256", "--out", str(out), "--stream"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "NGC_NO_PROGRESS": "1"}
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".tmp") for p in out.parent.glob(".*")) and child.poll() is None:
        assert time.monotonic() < deadline, "the run never started writing"
        time.sleep(0.05)
    assert child.poll() is None, "the run ended before it could be stopped; give it more work"
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr[-2000:]
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_fitted_groups_keep_their_reports_not_their_factors():
    """The float64 factors of a swapped group live in the model; kept in the fitter they would grow with depth."""
    from ngc.api import plan
    from ngc.models.tiny import build_tiny_model
    from ngc.pipeline.distributed import World
    from ngc.pipeline.fitting import GroupFitter
    from ngc.pipeline.run import PipelineOptions, collect_moments
    from ngc.pipeline.source import ModelSource

    model = build_tiny_model("gpt2")  # fused q|k|v: a module waits for all three groups
    config = CompressionConfig(method="svd-llm", ratio=0.3)
    method, members, groups, ranks = plan(model, config)
    moments = collect_moments(ModelSource(model, "cpu"), members, WINDOWS, PipelineOptions(), World())
    fitter = GroupFitter(model, method, groups, ranks, config)
    fitter.add(moments)
    fitter.fit_ready()
    assert not fitter.pending and set(fitter.fitted) == {g.id for g in groups}
    for group in groups:
        fit = fitter.fitted[group.id]
        assert fit.A == () and fit.B.numel() == 0 and fit.rank == ranks[group.id]
        assert fit.loss > 0 and 0 < fit.relative_loss < 1
