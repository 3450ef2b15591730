"""int8 checkpoints: the int8 data and scales stored as plain safetensors, the factor dtype recorded in ngc.json and
the quantization_config, exact round trips through ngc.load and from_pretrained, the layer-streamed writer equal
to quantizing in memory, and ``ngc compress --factor-dtype int8`` / ``ngc bench`` on the command line."""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import ngc
from ngc.accounting import Accounting, account
from ngc.api import compress
from ngc.arch import decoder_layers
from ngc.checkpoint.load import load, refuse_orphan_factors
from ngc.checkpoint.manifest import CheckpointError
from ngc.checkpoint.shards import canonical_tensors
from ngc.cli import main as cli
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.models.tiny import build_tiny_model, build_tiny_tokenizer, save_tiny_model
from ngc.modules import int8
from ngc.modules.int8 import Int8Factor, TorchaoMissingError, quantize_factors
from ngc.pipeline.folder import compress_folder

pytestmark = pytest.mark.skipif(find_spec("torchao") is None, reason="torchao is not installed (ngc[int8])")

TOKENS = torch.randint(0, 250, (3, 40), generator=torch.Generator().manual_seed(0))


def int8_checkpoint(tmp_path, family="llama", method="basis-sharing", **kwargs):
    model = build_tiny_model(family).eval()
    compress(model, CompressionConfig(method=method, ratio=0.3), CalibrationWindows(TOKENS, "random", None, 0))
    quantize_factors(model)
    return model, ngc.save(model, tmp_path / "ckpt", tokenizer=build_tiny_tokenizer(), **kwargs)


def logits(model, seed: int = 3) -> torch.Tensor:
    ids = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


def stored(folder) -> dict[str, str]:
    """Each stored tensor's safetensors dtype code (I8, F32, BF16, ...), from the header."""
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {name: handle.get_slice(name).get_dtype() for name in handle.keys()}


@pytest.mark.parametrize(
    ("family", "method"),
    [
        ("llama", "basis-sharing"),
        ("gpt2", "basis-sharing"),
        ("gpt_neox", "ngc"),
        ("qwen3", "ngc"),
        ("gemma3", "svd-llm"),
    ],
)
def test_ngc_load_and_from_pretrained_give_the_logits_of_the_int8_model(tmp_path, family, method):
    model, folder = int8_checkpoint(tmp_path, family, method)
    reference = logits(model)
    loaded = load(folder)
    assert torch.equal(logits(loaded), reference)
    from_hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu")
    assert torch.equal(logits(from_hf), reference)
    for again in (loaded, from_hf):
        factors = [m for m in again.modules() if isinstance(m, Int8Factor)]
        assert factors and all(f.qdata.dtype == torch.int8 and f.scale.dtype == torch.float32 for f in factors)


def test_the_files_hold_int8_data_and_scales_and_record_the_factor_dtype(tmp_path):
    model, folder = int8_checkpoint(tmp_path, "llama", "ngc")
    dtypes = stored(folder)
    data = {n: d for n, d in dtypes.items() if n.endswith(".qdata")}
    scales = {n: d for n, d in dtypes.items() if n.endswith(".scale")}
    assert data and set(data.values()) == {"I8"} and set(scales.values()) == {"F32"}
    assert {n.removesuffix(".qdata") for n in data} == {n.removesuffix(".scale") for n in scales}
    assert not [n for n in dtypes if n.endswith(".B") or ".A." in n and not n.endswith((".qdata", ".scale"))]
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))  # safetensors only, no pickles
    manifest = json.loads((folder / "ngc.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    assert manifest["factor_dtype"] == "int8" and manifest["dtype"] == "float32"
    assert config["quantization_config"]["factor_dtype"] == "int8"
    assert manifest["tensor_bytes"] == manifest["accounting"]["stored_bytes"] == account(model).stored_bytes
    tensors, _ = canonical_tensors(model)  # every tensor once (shared bases, tied embeddings)
    assert manifest["tensor_bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())


def test_a_float_checkpoint_records_no_factor_dtype(tmp_path):
    model = build_tiny_model("llama")
    compress(model, CompressionConfig(method="svd", ratio=0.3))
    folder = ngc.save(model, tmp_path / "float")
    assert "factor_dtype" not in json.loads((folder / "ngc.json").read_text())
    assert "factor_dtype" not in json.loads((folder / "config.json").read_text())["quantization_config"]
    assert not [m for m in load(folder).modules() if isinstance(m, Int8Factor)]


def test_a_shared_basis_is_stored_once_and_one_module_after_both_loaders(tmp_path):
    _, folder = int8_checkpoint(tmp_path, "llama", "basis-sharing")
    assert len([n for n in stored(folder) if "q_proj.bases" in n]) == 2  # data and scales of the q basis, once
    for model in (load(folder), AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)):
        layers = decoder_layers(model)
        assert layers[0].self_attn.q_proj.bases[0] is layers[1].self_attn.q_proj.bases[0]
        assert layers[0].self_attn.q_proj.bases[0].int8


def test_bfloat16_int8_round_trips_exactly(tmp_path, tiny_folders):
    model = AutoModelForCausalLM.from_pretrained(tiny_folders["qwen3"], dtype=torch.bfloat16).eval()
    compress(model, CompressionConfig(method="ngc", ratio=0.3), CalibrationWindows(TOKENS, "random", None, 0))
    quantize_factors(model)
    folder = ngc.save(model, tmp_path / "ckpt")
    assert set(d for n, d in stored(folder).items() if n.endswith(".scale")) == {"BF16"}
    assert torch.equal(logits(load(folder)), logits(model))
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)), logits(model))


@pytest.mark.parametrize("loader", ["from_pretrained", "ngc.load"])
def test_save_pretrained_of_a_loaded_int8_model_loads_again_identically(tmp_path, loader):
    model, folder = int8_checkpoint(tmp_path, "gpt2", "basis-sharing")
    first = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32) if loader != "ngc.load" else load(folder)
    first.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["quantization_config"]["factor_dtype"] == "int8"
    for again in (
        AutoModelForCausalLM.from_pretrained(tmp_path / "again", dtype=torch.float32),
        load(tmp_path / "again"),
    ):
        assert torch.equal(logits(again), logits(model))


def test_the_streamed_writer_gives_the_model_quantized_in_memory(tmp_path):
    folder = save_tiny_model("gpt_neox", tmp_path / "dense")
    config = CompressionConfig(method="ngc", ratio=0.3, alloc="uniform")  # ngc's streamed defaults
    result = compress_folder(folder, tmp_path / "streamed", config, TOKENS, factor_dtype="int8")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    compress(model, config, TOKENS)
    quantize_factors(model)
    streamed = load(tmp_path / "streamed")
    assert torch.equal(logits(streamed), logits(model))
    assert result.accounting == account(model) == account(streamed)
    assert json.loads((tmp_path / "streamed" / "ngc.json").read_text())["factor_dtype"] == "int8"


def test_records_that_disagree_or_name_an_unknown_factor_dtype_are_refused(tmp_path):
    _, folder = int8_checkpoint(tmp_path)
    manifest = json.loads((folder / "ngc.json").read_text())
    del manifest["factor_dtype"]
    (folder / "ngc.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="records float factors, the quantization_config .* int8"):
        load(folder)
    manifest["factor_dtype"] = "int4"
    (folder / "ngc.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="stores its factors as 'int4'") as caught:
        load(folder)
    assert "upgrade ngc" in caught.value.hint


def test_int8_factors_without_records_are_an_orphan_checkpoint(tmp_path):
    _, folder = int8_checkpoint(tmp_path)
    (folder / "ngc.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    del config["quantization_config"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="holds factorised tensors"):
        refuse_orphan_factors(folder)


def without_torchao(monkeypatch) -> None:
    monkeypatch.setattr(int8, "_int8_tensor", None)
    for name in ("torchao", "torchao.quantization"):
        monkeypatch.setitem(sys.modules, name, None)


def test_an_int8_checkpoint_without_torchao_is_refused_with_the_install_line(tmp_path, monkeypatch):
    _, folder = int8_checkpoint(tmp_path)
    without_torchao(monkeypatch)
    with pytest.raises(TorchaoMissingError, match="need torchao") as caught:
        load(folder)
    assert "ngc[int8]" in caught.value.hint


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def compress_args(model, out, text_file, *extra: str) -> list[str]:
    calibration = ["--calib", str(text_file), "--calib-samples", "4", "--calib-len", "32"]
    return ["compress", str(model), "--method", "ngc", "--ratio", "0.5", *calibration, "--out", str(out), *extra]


def test_compress_factor_dtype_int8_writes_an_int8_checkpoint_that_eval_and_bench_load(
    capsys, tiny_folders, tmp_path, text_file
):
    out, report = tmp_path / "ckpt", tmp_path / "compress.json"
    code, shown, err = run(capsys, *compress_args(tiny_folders["llama"], out, text_file, "--factor-dtype", "int8"))
    assert code == 0, err
    assert "stored bytes" in shown
    assert json.loads((out / "ngc.json").read_text())["factor_dtype"] == "int8"
    model = load(out)
    assert all(m.int8 for m in model.modules() if hasattr(m, "int8"))
    assert Accounting.from_dict(json.loads((out / "ngc.json").read_text())["accounting"]) == account(model)
    code, shown, err = run(
        capsys, "eval", str(out), "--ppl-file", str(text_file), "--ppl-len", "32", "--max-windows", "1"
    )
    assert code == 0 and "ppl" in shown, err
    args = ["bench", str(out), "--shapes", "1x8", "--decode", "1x8+2", "--repeats", "1", "--warmup", "0"]
    code, _, err = run(capsys, *args, "--no-memory", "--threads", "1", "--json", str(report))
    assert code == 0, err
    bench = json.loads(report.read_text())
    assert bench["decode"]["limit"] > 1 and bench["prefill"][0]["tokens_per_s"] > 0
    code, shown, _ = run(capsys, "info", str(out))
    assert code == 0 and "int8 factors" in shown


def test_compress_without_torchao_or_with_an_unknown_factor_dtype_fails_before_writing(
    capsys, monkeypatch, tiny_folders, tmp_path, text_file
):
    out = tmp_path / "new" / "ckpt"
    code, _, err = run(capsys, *compress_args(tiny_folders["llama"], out, text_file, "--factor-dtype", "int4"))
    assert code == 2
    assert_clean_error(err, "unknown factor dtype 'int4'", "float, int8")
    without_torchao(monkeypatch)
    code, _, err = run(capsys, *compress_args(tiny_folders["llama"], out, text_file, "--factor-dtype", "int8"))
    assert code == 2
    assert_clean_error(err, "int8 factors need torchao", "pip install 'ngc[int8]'")
    assert not (tmp_path / "new").exists()
    code, _, err = run(capsys, *compress_args(tiny_folders["llama"], tmp_path / "float", text_file))
    assert code == 0, err  # float factors never need torchao


def test_compress_where_torchao_kernels_do_not_run_fails_before_writing(
    capsys, monkeypatch, tiny_folders, tmp_path, text_file
):
    def unsupported(self, x):
        raise NotImplementedError("no int8 weight-only kernel for this device")

    monkeypatch.setattr(Int8Factor, "forward", unsupported)
    out = tmp_path / "new" / "ckpt"
    args = compress_args(tiny_folders["llama"], out, text_file, "--factor-dtype", "int8", "--dtype", "bfloat16")
    code, _, err = run(capsys, *args)
    assert code == 2
    assert_clean_error(err, "do not run in bfloat16 on cpu", "no int8 weight-only kernel", "--factor-dtype float")
    assert not (tmp_path / "new").exists()


def test_eval_of_an_int8_checkpoint_without_torchao_is_a_clean_error(capsys, monkeypatch, tmp_path, text_file):
    _, folder = int8_checkpoint(tmp_path)
    without_torchao(monkeypatch)
    code, _, err = run(capsys, "eval", str(folder), "--ppl-file", str(text_file), "--ppl-len", "32")
    assert code == 2
    assert_clean_error(err, "int8 factors need torchao", "ngc[int8]")
