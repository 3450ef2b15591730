"""Shared fixtures: tiny models of every family (offline, seeded), text files, an isolated cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: tests never reach for the hub

import pytest
import torch

from ngc.models.tiny import save_tiny_model, tiny_families

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. Neuronal groups exchange low-dimensional messages; "
    "weights become interactions between neuron states. "
) * 8


# Tiny models gain nothing from threads, and spinning threads slow everything when the cores are shared.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path_factory, monkeypatch, request):
    """Unit tests never touch the user's cache; slow tests keep the real one (conversions are costly)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("NGC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("NGC_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny model folder (weights + tokenizer) for every supported family."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: save_tiny_model(family, root / family) for family in tiny_families()}


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "sample.txt"
    path.write_text(SAMPLE_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A data directory with a small WikiText-2-shaped corpus (validation and test, no train)."""
    folder = tmp_path / "data" / "wikitext2_raw"
    folder.mkdir(parents=True)
    for split, name in (("valid", "wiki.valid.raw"), ("test", "wiki.test.raw")):
        lines = [" \n", f" = {split} heading = \n", " \n"] + [f" {split} line {i} : {SAMPLE_TEXT} \n" for i in range(3)]
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return tmp_path / "data"


@pytest.fixture
def task_data_dir(tmp_path, monkeypatch) -> Path:
    """A data directory with a few items of arc_easy, piqa, winogrande and boolq (tests/task_items.py)."""
    from ngc.eval.tasks import TASKS
    from tests.task_items import ITEMS

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    root = tmp_path / "data"
    for task, (name, rows) in ITEMS.items():
        folder = root / TASKS[task].folder
        folder.mkdir(parents=True)
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return root
