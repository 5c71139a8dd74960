"""Load a model (HF directory or GGUF), its configuration and tokenizer; pick device and dtype.

Names resolve on first use, so ``kairos.loader.default`` or ``.tokenizer`` can be imported
without torch (the API server process never needs it)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_model": "model", "read_arch": "model", "resolve_device": "model", "resolve_dtype": "model",
    "cpu_has_bf16": "model", "load_tokenizer": "tokenizer", "resolve_model_path": "default",
    "save_config_dir": "export",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kairos.loader' has no attribute {name!r}")
    return getattr(importlib.import_module(f"kairos.loader.{_EXPORTS[name]}"), name)


__all__ = sorted(_EXPORTS)
