"""Register ngc with transformers when transformers' quantizer registry is first imported, not before.

``import ngc`` stays light (no torch, no transformers): it only installs a finder on ``sys.meta_path`` that waits
for ``transformers.quantizers.auto`` (imported by every ``from_pretrained``) and registers ngc's config and
quantizer right after that module has run. If transformers is already imported, registration happens at once.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

TARGET = "transformers.quantizers.auto"


def register_now() -> None:
    """Register, or warn once (never raise: transformers must stay importable) when this transformers cannot."""
    partial = sys.modules.get("ngc.checkpoint.hf")
    if partial is not None and not hasattr(partial, "UnsupportedTransformersError"):
        return  # ngc.checkpoint.hf is being imported (and imported transformers): it registers when it is done
    from ngc.checkpoint.hf import UnsupportedTransformersError, register

    try:
        register()
    except UnsupportedTransformersError as exc:
        warnings.warn(str(exc), stacklevel=2)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        register_now()


class RegisterOnImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``transformers.quantizers.auto`` so that registration follows its execution."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Register now if transformers' registry is loaded, else when it loads (once per process)."""
    if TARGET in sys.modules:
        register_now()
    elif not any(isinstance(finder, RegisterOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, RegisterOnImport())
