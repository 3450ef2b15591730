"""`ngc upgrade`: a format-1 checkpoint rewritten in place into the current format loads through from_pretrained."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import ngc
from ngc.checkpoint import upgrade as upgrade_module
from ngc.checkpoint.load import load
from ngc.checkpoint.manifest import FORMAT_VERSION, CheckpointError
from ngc.checkpoint.upgrade import NotACheckpointError, checkpoint_format, upgrade
from ngc.cli import main as cli
from ngc.errors import UsageError
from ngc.models.tiny import build_tiny_tokenizer

from .folders import compressed, edit_json, logits, make_format_1


def digests(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def llama():
    return compressed()


@pytest.fixture
def current(llama, tmp_path):
    return ngc.save(llama, tmp_path / "current", tokenizer=build_tiny_tokenizer())


@pytest.fixture
def old(llama, tmp_path):
    return make_format_1(ngc.save(llama, tmp_path / "old", tokenizer=build_tiny_tokenizer()))


@pytest.mark.parametrize(
    ("family", "method"), [("llama", "basis-sharing"), ("gpt2", "basis-sharing"), ("gpt_neox", "ngc")]
)
def test_an_upgraded_checkpoint_loads_with_from_pretrained_as_with_ngc_load(tmp_path, family, method):
    model = compressed(family, method)
    reference = ngc.save(model, tmp_path / "reference", tokenizer=build_tiny_tokenizer())
    folder = make_format_1(ngc.save(model, tmp_path / "ckpt", tokenizer=build_tiny_tokenizer()))
    assert checkpoint_format(folder) == 1
    assert torch.equal(logits(load(folder)), logits(model))
    before = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)  # the defect: dense, random weights
    assert not torch.allclose(logits(before), logits(model), atol=1e-3)

    result = upgrade(folder)
    assert (result.from_version, result.to_version, result.changed) == (1, FORMAT_VERSION, True)
    assert checkpoint_format(folder) == FORMAT_VERSION
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert torch.equal(logits(loaded), logits(load(folder)))
    assert torch.equal(logits(loaded), logits(model))
    # the upgraded weights and config are what a save in the current format writes, byte for byte
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
    manifest, fresh = (json.loads((f / "ngc.json").read_text()) for f in (folder, reference))
    assert manifest.pop("upgrade")["from_format_version"] == 1
    assert manifest == fresh | {"versions": manifest["versions"]}


def test_a_bfloat16_checkpoint_keeps_its_dtype(llama, tmp_path):
    reference = ngc.save(llama, tmp_path / "reference", dtype="bfloat16")
    folder = make_format_1(ngc.save(llama, tmp_path / "ckpt", dtype="bfloat16"))
    upgrade(folder)
    assert (folder / "config.json").read_bytes() == (reference / "config.json").read_bytes()
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert loaded.dtype == torch.bfloat16
    assert torch.equal(logits(loaded), logits(load(folder))) and load(folder).dtype == torch.bfloat16
    assert torch.equal(logits(loaded), logits(load(reference)))


def test_upgrade_writes_shards_above_the_shard_size(old, llama):
    upgrade(old, max_shard_bytes=20_000)
    assert (old / "model.safetensors.index.json").is_file() and not (old / "model.safetensors").exists()
    assert len(list(old.glob("model-*-of-*.safetensors"))) > 2
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(old, dtype=torch.float32)), logits(llama))
    assert torch.equal(logits(load(old)), logits(llama))


def test_upgrade_keeps_every_other_file_and_leaves_nothing_beside(old):
    (old / "notes.txt").write_text("kept")
    (old / "extra").mkdir()
    (old / "extra" / "a.json").write_text("{}")
    before = digests(old)
    upgrade(old)
    after = digests(old)
    changed = {name for name in before if before[name] != after.get(name)}
    assert changed == {"model.safetensors", "config.json", "ngc.json"}
    assert set(after) == set(before)
    assert sorted(p.name for p in old.parent.iterdir()) == ["old"]  # no temporary folder, no lock left


def test_a_current_checkpoint_is_left_untouched(current):
    before = {p.name: p.stat().st_mtime_ns for p in current.iterdir()}
    result = upgrade(current)
    assert (result.from_version, result.to_version, result.changed) == (FORMAT_VERSION, FORMAT_VERSION, False)
    assert {p.name: p.stat().st_mtime_ns for p in current.iterdir()} == before


def test_a_folder_saved_by_from_pretrained_is_current(current, tmp_path):
    again = tmp_path / "again"
    AutoModelForCausalLM.from_pretrained(current, dtype=torch.float32).save_pretrained(again)
    assert not (again / "ngc.json").exists()
    assert upgrade(again).changed is False


def test_upgrade_through_a_symbolic_link_keeps_the_link(old, llama, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(old)
    assert upgrade(link).changed
    assert link.is_symlink() and checkpoint_format(old) == FORMAT_VERSION
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(link, dtype=torch.float32)), logits(llama))


def test_ngc_load_names_ngc_upgrade_for_format_1_only(old, current, caplog):
    with caplog.at_level(logging.WARNING, logger="ngc"):
        load(current)
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="ngc"):
        load(old)
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "format 1" in message and f"`ngc upgrade {old}`" in message


def test_paths_that_are_no_checkpoint_are_usage_errors(tmp_path, tiny_folders):
    with pytest.raises(NotACheckpointError, match="no such folder"):
        upgrade(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotACheckpointError, match="is a file"):
        upgrade(tmp_path / "file")
    before = digests(tiny_folders["llama"])
    with pytest.raises(NotACheckpointError, match="is not an ngc checkpoint") as info:
        upgrade(tiny_folders["llama"])
    assert isinstance(info.value, UsageError) and isinstance(info.value, CheckpointError)
    assert "ngc compress" in info.value.hint
    assert digests(tiny_folders["llama"]) == before


def test_damaged_or_unknown_checkpoints_are_refused_and_left_as_they_were(old, current, tmp_path):
    tensors = load_file(str(old / "model.safetensors"))
    del tensors[sorted(tensors)[-1]]
    save_file(tensors, str(old / "model.safetensors"), metadata={"format": "pt"})
    before = digests(old)
    with pytest.raises(CheckpointError, match="1 tensor.s. missing"):
        upgrade(old)
    assert digests(old) == before and sorted(p.name for p in old.parent.iterdir()) == ["current", "old"]

    edit_json(current / "ngc.json", lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="this ngc reads up to") as info:
        upgrade(current)
    assert "pip install -U ngc" in info.value.hint
    edit_json(current / "ngc.json", lambda m: m.update(format_version=FORMAT_VERSION))
    edit_json(current / "config.json", lambda c: c.pop("quantization_config"))
    with pytest.raises(CheckpointError, match="records format 2, but .* names no ngc quantization_config"):
        upgrade(current)


def test_a_failed_upgrade_leaves_the_checkpoint_as_it_was(old, llama, monkeypatch):
    before = digests(old)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(upgrade_module, "_write_records", fail)
    with pytest.raises(OSError, match="disk full"):
        upgrade(old)
    assert digests(old) == before and sorted(p.name for p in old.parent.iterdir()) == ["old"]
    assert torch.equal(logits(load(old)), logits(llama))


def test_a_checkpoint_another_run_is_writing_is_refused(old):
    import fcntl
    import os

    from ngc.errors import OutputError

    before = digests(old)
    fd = os.open(old.parent / f".{old.name}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="being written by another ngc run"):
            upgrade(old)
    finally:
        os.close(fd)
    assert digests(old) == before


def test_cli_upgrade_then_already_current(capsys, old, llama):
    assert cli.run(["upgrade", str(old)]) == 0
    out = capsys.readouterr().out
    assert f"upgraded {old} from format 1 to {FORMAT_VERSION}" in out
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(old, dtype=torch.float32)), logits(llama))
    assert cli.run(["upgrade", str(old)]) == 0
    assert "already in the current checkpoint format (2); nothing changed" in capsys.readouterr().out


def test_cli_upgrade_errors_and_help(capsys, tmp_path, tiny_folders, old):
    def error_lines(err: str) -> list[str]:
        assert "Traceback" not in err
        return [line for line in err.splitlines() if line.startswith("error: ")]

    assert cli.run(["upgrade", str(tiny_folders["gpt2"])]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "is not an ngc checkpoint" in err and "hint: " in err
    assert cli.run(["upgrade", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli.run(["upgrade"]) == 2  # no CHECKPOINT: click's usage error
    assert "Missing argument 'CHECKPOINT'" in capsys.readouterr().err
    (old / "model.safetensors").write_bytes(b"damaged")
    assert cli.run(["upgrade", str(old)]) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "cannot be read" in err
    assert cli.run(["upgrade", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "format 1" in shown and "from_pretrained" in shown and "ngc upgrade out/smol-svdllm-30" in shown
    assert cli.run(["--help"]) == 0
    assert "upgrade" in capsys.readouterr().out
