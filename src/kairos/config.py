"""Configuration dataclasses, one per component, validated on construction.

The CLI builds its flags from these same dataclasses (see ``kairos.cli``), so a
default lives in exactly one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICES = ("auto", "cpu", "cuda")
_ACTIVATION_QUANT = ("none", "int8")
_LOAD_FORMATS = ("auto", "dummy")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse a byte count such as ``1073741824``, ``512MiB`` or ``2G`` (binary units)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r}: expected a number with an optional unit (KiB, MiB, GiB)")
    value, unit = float(m.group(1)), (m.group(2) or "B").upper()
    scale = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit[0]]
    return int(value * scale)


@dataclass(frozen=True)
class ModelConfig:
    """Which weights to load and how."""

    model: str = field(default="default", metadata={"help": "HF directory, .gguf file, or 'default'"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPUs and CPUs with AVX512-BF16 or AMX, except float32 for a GGUF on CPUs that run Kairos' kernels), float32, bfloat16, float16"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    max_model_len: int | None = field(default=None, metadata={"help": "cap on prompt + output tokens (default: the model's)"})
    seed: int = field(default=0, metadata={"help": "seed of the global sampler generator"})
    cpu_kernels: bool = field(default=True, metadata={"help": "on x86 CPUs in float32, use Kairos' C kernels: decode attention over the paged cache, and matmuls straight from a GGUF's Q4_1/Q8_0 blocks (no float32 copy of them)"})
    cuda_graphs: bool = field(default=True, metadata={"help": "on GPUs, replay decode steps from CUDA graphs captured at start-up at padded batch sizes up to max_num_seqs (needs Triton)"})
    activation_quant: str = field(default="none", metadata={"help": "none, or int8: the decoder layers' matmuls of up to 8 rows (decode steps) over GGUF blocks quantize their inputs to int8 per 32 values, as llama.cpp does (faster batch-1 decode on CPUs; outputs no longer equal a float32 model's)"})
    load_format: str = field(default="auto", metadata={"help": "auto: the weights in the model path; dummy: random weights of the model's shapes, seeded by --seed, read from its config alone (a directory with config.json and no weights will do): for benchmarks where the weight files are not at hand, as vLLM's --load-format dummy; outputs are meaningless"})

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a path or 'default'")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.device not in _DEVICES:
            raise ValueError(f"device must be one of {_DEVICES}, got {self.device!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.activation_quant not in _ACTIVATION_QUANT:
            raise ValueError(f"activation_quant must be one of {_ACTIVATION_QUANT}, got {self.activation_quant!r}")
        if self.load_format not in _LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {_LOAD_FORMATS}, got {self.load_format!r}")
        if self.activation_quant != "none" and self.load_format == "dummy":
            raise ValueError("activation_quant needs a GGUF's quantized blocks, which load_format='dummy' does not read")
        if self.activation_quant != "none" and not self.cpu_kernels:
            raise ValueError("activation_quant needs cpu_kernels (it is a mode of Kairos' CPU kernels)")


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: block size and how many blocks."""

    block_size: int = field(default=16, metadata={"help": "tokens per KV block"})
    kv_cache_memory: str | None = field(default=None, metadata={"help": "memory for the KV cache, e.g. 512MiB, 4GiB (default: 2GiB on CPUs; on GPUs what --gpu-memory-utilization leaves once the weights are loaded)"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "on GPUs without --kv-cache-memory: the share of the device's memory this engine may hold in all (weights, KV cache, activations)"})
    num_blocks: int | None = field(default=None, metadata={"help": "exact number of KV blocks (overrides --kv-cache-memory)"})
    prefix_cache: bool = field(default=True, metadata={"help": "reuse the KV of shared prefixes (radix tree)"})

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.kv_cache_memory is not None and parse_size(self.kv_cache_memory) <= 0:
            raise ValueError(f"kv_cache_memory must be positive, got {self.kv_cache_memory!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits."""

    max_num_seqs: int | None = field(default=None, metadata={"help": "most sequences in one step (default: 64 on CPUs, 256 on GPUs)"})
    max_num_batched_tokens: int | None = field(default=None, metadata={"help": "token budget of one step, prefill chunks + decodes (default: 512 on CPUs, 8192 on GPUs)"})
    scheduling_policy: str = field(default="slack", metadata={"help": "fcfs, priority, edf, slack (SLO requests by least slack, then best-effort by longest cached prefix), lpm"})
    starve_steps: int = field(default=64, metadata={"help": "steps a request may be passed over before it goes first"})
    slo_confidence: float = field(default=0.9, metadata={"help": "admit an SLO request when its objectives hold at "
                                  "this quantile of the engine's own recent prediction errors"})
    yield_slack_s: float = field(default=1.0, metadata={"help": "while a first-token deadline waits on prompt work, "
                                 "a running request bound only by a deadline skips its decode in a step if it has "
                                 "more than this many seconds of slack, plus a fifth of its remaining tokens' time "
                                 "(the time goes to the prompt); 0: never"})
    async_scheduling: bool | None = field(default=None, metadata={"help": "schedule and queue step N+1 while step N "
                                          "runs on the device, its sampled tokens fed on the device (default: on "
                                          "GPUs; a CPU computes while it launches, so there it would only delay tokens)"})

    def __post_init__(self) -> None:
        from kairos.sched.policies import get_policy

        if not 0.5 <= self.slo_confidence < 1:
            raise ValueError(f"slo_confidence must be in [0.5, 1), got {self.slo_confidence}")
        get_policy(self.scheduling_policy)  # raises on an unknown name
        if not 0 <= self.yield_slack_s < float("inf"):
            raise ValueError(f"yield_slack_s must be a non-negative number of seconds, got {self.yield_slack_s}")
        if self.starve_steps < 1:
            raise ValueError(f"starve_steps must be >= 1, got {self.starve_steps}")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")

    def for_device(self, device_type: str) -> SchedulerConfig:
        """This configuration with the limits left unset filled in for the device: a CPU step
        is slow per token, so small batches and chunks keep latency; a GPU's step costs about
        the same from 1 to hundreds of sequences, so it batches wide (vLLM's defaults); async
        scheduling where launching a step does not compute it (GPUs)."""
        seqs, tokens = (256, 8192) if device_type == "cuda" else (64, 512)
        return replace(self, max_num_seqs=self.max_num_seqs or seqs,
                       max_num_batched_tokens=self.max_num_batched_tokens or tokens,
                       async_scheduling=device_type == "cuda" if self.async_scheduling is None else self.async_scheduling)


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding by n-gram lookup (vLLM's "ngram" method, llama.cpp's lookup decoding)."""

    speculative_tokens: int = field(default=0, metadata={"help": "draft up to this many tokens a step per sequence "
                                    "by finding its last few tokens earlier in its own prompt and output, and verify "
                                    "them in one forward pass (greedy outputs are unchanged; fast where outputs quote "
                                    "their input); 0: off. Needs synchronous steps (no --async-scheduling)"})
    prompt_lookup_min: int = field(default=2, metadata={"help": "shortest n-gram a draft may follow"})
    prompt_lookup_max: int = field(default=4, metadata={"help": "longest n-gram tried first"})

    def __post_init__(self) -> None:
        if not 0 <= self.speculative_tokens <= 16:
            raise ValueError(f"speculative_tokens must be in [0, 16], got {self.speculative_tokens}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError(f"prompt_lookup_min and prompt_lookup_max must satisfy 1 <= min <= max, got "
                             f"{self.prompt_lookup_min} and {self.prompt_lookup_max}")


@dataclass(frozen=True)
class EngineConfig:
    """The engine's components' configurations, side by side (each component gets only its own)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)

    def __post_init__(self) -> None:
        if self.speculative.speculative_tokens and self.scheduler.async_scheduling:
            # (a draft is made from the last token on the host, which a step launched ahead has not)
            raise ValueError("speculative_tokens needs synchronous steps: drop async_scheduling")

    @classmethod
    def from_kwargs(cls, **kwargs) -> EngineConfig:
        """Build from flat keyword arguments (``dtype=..., block_size=...``); unknown names raise."""
        parts = {}
        for name, sub in (("model", ModelConfig), ("cache", CacheConfig), ("scheduler", SchedulerConfig),
                          ("speculative", SpeculativeConfig)):
            names = {f.name for f in fields(sub)}
            parts[name] = sub(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})
        if kwargs:
            raise TypeError(f"unknown engine option(s): {', '.join(sorted(kwargs))}")
        return cls(**parts)
