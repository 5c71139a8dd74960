"""Kairos: deadline-aware LLM serving on PyTorch."""

from kairos.engine.llm import LLM
from kairos.engine.output_processor import CompletionOutput, RequestOutput
from kairos.engine.sampling_params import SamplingParams
from kairos.engine.slo import SLO

__all__ = ["LLM", "SLO", "SamplingParams", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"
