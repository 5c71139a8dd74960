"""Kairos: deadline-aware LLM serving on PyTorch.

``LLM`` and friends resolve on first use: importing a submodule (the API server's) does not
import torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LLM": "kairos.engine.llm", "SamplingParams": "kairos.wire.sampling_params", "SLO": "kairos.wire.slo",
    "StructuredOutput": "kairos.wire.sampling_params", "SLOInfeasible": "kairos.sched.admission",
    "RequestOutput": "kairos.detok.output_processor", "CompletionOutput": "kairos.detok.output_processor",
}
__all__ = ["LLM", "SLO", "SLOInfeasible", "SamplingParams", "StructuredOutput", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kairos' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
