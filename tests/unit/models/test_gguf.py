"""A .gguf file converts once into the cache, to a float folder that computes exactly what the GGUF does."""

from __future__ import annotations

import json

import pytest
import torch

from ngc.errors import DataFormatError, UnsupportedArchitectureError
from ngc.models import load as load_module
from ngc.models.gguf import SOURCE_FILE, file_sha256
from ngc.models.load import load_model

from .tiny_gguf import write_tiny_llama_gguf


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "src" / "tiny-llama.gguf"
    path.parent.mkdir()
    model, tokenizer = write_tiny_llama_gguf(path)
    return path, model, tokenizer


def test_gguf_converts_to_the_same_model(tiny_gguf, tmp_path):
    path, original, tokenizer = tiny_gguf
    cache = tmp_path / "cache"
    loaded = load_model(str(path), cache=cache)
    digest = file_sha256(path)
    assert loaded.folder == cache / "gguf" / digest[:16]
    assert json.loads((loaded.folder / SOURCE_FILE).read_text())["sha256"] == digest
    assert "quantization_config" not in json.loads((loaded.folder / "config.json").read_text())
    ids = tokenizer("neuronal groups", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert loaded.tokenizer("neuronal groups", add_special_tokens=False)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, original(ids).logits, rtol=0, atol=0)


def test_second_load_reads_the_cache(tiny_gguf, tmp_path, monkeypatch):
    path, _, _ = tiny_gguf
    load_model(str(path), cache=tmp_path / "cache")

    def no_conversion(*args, **kwargs):
        raise AssertionError("a converted GGUF must be reused")

    monkeypatch.setattr(load_module, "convert_gguf", no_conversion)
    assert load_model(str(path), cache=tmp_path / "cache").spec.family == "Llama"


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(DataFormatError, match="could not be read as a GGUF"):
        load_model(str(bad), cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())


def test_unsupported_family_in_a_gguf_is_refused_before_conversion(tmp_path):
    import gguf

    path = tmp_path / "bloom.gguf"
    writer = gguf.GGUFWriter(str(path), "bloom")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    writer.add_token_scores([0.0, 0.0])
    writer.add_token_types([1, 1])
    writer.add_token_merges([])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedArchitectureError, match="'bloom' is not supported"):
        load_model(str(path), cache=tmp_path / "cache")


def test_cli_announces_the_one_time_conversion(tiny_gguf, tmp_path, text_file, capsys):
    from ngc.cli.main import run

    path, _, _ = tiny_gguf
    args = ["eval", str(path), "--ppl-file", str(text_file), "--ppl-len", "64", "--max-windows", "1"]
    assert run([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "converting tiny-llama.gguf" in capsys.readouterr().err
    assert run([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "converting" not in capsys.readouterr().err
