"""`import ngc` stays light: no transformers, lm-eval or matplotlib until they are needed, CUDA untouched."""

from __future__ import annotations

import subprocess
import sys


def test_import_ngc_is_lean():
    code = (
        "import sys, ngc, ngc.errors, ngc.settings\n"
        "heavy = [m for m in ('transformers', 'lm_eval', 'matplotlib', 'torch') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
