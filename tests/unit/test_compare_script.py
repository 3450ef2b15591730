"""benchmarks/compare.py: runs with different cells can add to one results file side by side."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

COMPARE = Path(__file__).resolve().parents[2] / "benchmarks" / "compare.py"


def _compare():
    spec = importlib.util.spec_from_file_location("compare", COMPARE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = module
    spec.loader.exec_module(module)
    return module


def test_a_cell_written_keeps_the_cells_another_run_finished_meanwhile(tmp_path):
    path = tmp_path / "results.json"
    started = {"settings": {"model": "m"}, "cells": {"a@0.5": {"ppl": 1.0}}}
    path.write_text(json.dumps(started))
    mine = json.loads(path.read_text())  # this run read the file when it started
    other = json.loads(path.read_text()) | {"cells": {"a@0.5": {"ppl": 1.0}, "b@0.5": {"ppl": 2.0}}}
    path.write_text(json.dumps(other))  # another run finished its cell since
    mine["cells"]["c@0.5"] = {"ppl": 3.0}
    _compare().save_with_others(path, mine)
    assert set(json.loads(path.read_text())["cells"]) == {"a@0.5", "b@0.5", "c@0.5"}
