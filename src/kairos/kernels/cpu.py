"""CPU kernels torch lacks for this engine (``csrc/*.c``: x86-64, AVX2 + FMA + F16C; AVX-512 variants).

- :func:`gguf_gemm`: matmuls straight from GGUF Q4_1 / Q8_0 blocks with float32 activations.
  A decode step of a few sequences is bound by reading the weights: float32 weights of a 135M
  model are 540 MB, its Q4_1 blocks 66 MB. Batches are bound by the FMAs: a tiled GEMM decodes
  the blocks as its packing step (no dense copy of the weights anywhere); from 12 rows up it
  beats dequantizing + MKL's float32 GEMM on the machine measured (1.9x at 64 rows, 1.2x at 512).
  torch's int4 kernels want bfloat16 activations and other layouts.
  Opt-in, few-row shapes only: int8 activations (``gguf_gemm_q8.c``), llama.cpp's arithmetic.
- :func:`paged_decode_attention`: one query token per sequence against the paged KV cache,
  read in place (the torch path gathers every context into a padded copy first).

The C files are compiled once with the system C compiler into Kairos' cache and loaded with
ctypes (calls release the GIL). Where that cannot be done (no compiler, another CPU)
:func:`load` returns None and callers keep their torch paths. The build targets AVX2; the
AVX-512 variants in it (``*_avx512.c``, ``*_vnni.c``) are switched on at load by the CPU's flags
(:func:`isa_bits`; ``KAIROS_CPU_ISA=avx2`` keeps the AVX2 kernels, ``avx512`` runs every variant
the CPU has, also those off by default).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
SOURCES = sorted(CSRC.glob("*.c"))
# bytes per block of 32 weights (GGUF layout): Q4_1 = f16 d, f16 m, 16 nibble bytes; Q8_0 = f16 d, 32 int8
BLOCK_BYTES = {"q4_1": 20, "q8_0": 34}
_REQUIRED_FLAGS = ("avx2", "fma", "f16c")
_AVX512_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
ISA_ENV = "KAIROS_CPU_ISA"
ISA_CHOICES = ("auto", "avx2", "avx512")
# The AVX-512 variants (csrc/simd.h: ISA_*): their bit, the CPU flags they need, and whether
# "auto" runs them (only where they beat the AVX2 kernels: benchmarks/cpu_kernels.py --isa).
VARIANTS = {
    "gemm": (1, _AVX512_FLAGS, True),
    "q8_vnni": (2, (*_AVX512_FLAGS, "avx512_vnni"), True),
}
_i64, _ptr, _f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
_SIGNATURES = {
    "gguf_matmul": [_i64, _ptr, _i64, _i64, _i64, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _i64],
    "paged_decode_attention": [_ptr, _i64, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _i64, _i64, _i64, _i64, _f32, _ptr],
    "add_rms_norm": [_ptr, _ptr, _ptr, _i64, _i64, _f32, _ptr],
    "rope_store_kv": [_ptr, _i64, _i64, _i64, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr],
    "silu_mul": [_ptr, _i64, _i64, _ptr],
    "dequant_q4_1": [_ptr, _ptr, _ptr, _i64, _i64, _ptr],
    "dequant_q8_0": [_ptr, _ptr, _i64, _i64, _ptr],
    "kairos_set_isa": [_i64],
    "decode_stack": [_ptr, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _i64,
                     _f32, _f32, _ptr, _ptr, _i64],
}
_RESTYPES = {"decode_stack": ctypes.c_int, "gguf_matmul": ctypes.c_int}


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def usable(flags: set[str], machine: str) -> bool:
    """Whether the kernels can run on a CPU of ``machine`` (``platform.machine()``) with ``flags``."""
    return machine in ("x86_64", "AMD64") and set(_REQUIRED_FLAGS) <= flags


def isa_bits(flags: set[str], choice: str) -> int:
    """The AVX-512 variants to run (``VARIANTS`` bits) on a CPU with ``flags``: none for "avx2",
    every one the CPU has for "avx512", those of them on by default for "auto"."""
    if choice not in ISA_CHOICES:
        raise ValueError(f"CPU ISA must be one of {ISA_CHOICES}, not {choice!r}")
    return sum(bit for bit, need, default in VARIANTS.values()
               if choice != "avx2" and set(need) <= flags and (default or choice == "avx512"))


_isa = ["auto"]  # the choice in force


def set_isa(choice: str) -> str:
    """Switch which kernel variants run (a choice as for :func:`isa_bits`), process-wide; not
    while a kernel runs (for tests and benchmarks that compare them). Returns the previous choice."""
    bits = isa_bits(cpu_flags(), choice)
    lib = load()
    if lib is not None:
        lib.kairos_set_isa(bits)
    prev, _isa[0] = _isa[0], choice
    return prev


@cache
def load() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use into the cache; None where they cannot run."""
    flags = cpu_flags()
    if not usable(flags, platform.machine()):
        return None
    return _build(flags)


def _build(flags: set[str]) -> ctypes.CDLL | None:
    from kairos.loader.tokenizer import cache_dir

    # AVX2 baseline, not -march=native: the library runs on any AVX2 CPU (the AVX-512 code in it
    # carries its own target attributes) and its AVX2 kernels are AVX2 code on every machine, so
    # they can be compared with the AVX-512 variants.
    cflags = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC"]
    key = hashlib.sha1(b"".join(p.read_bytes() for p in [*SOURCES, *sorted(CSRC.glob("*.h"))]) + " ".join(cflags).encode()).hexdigest()[:16]
    lib_path = cache_dir() / "kernels" / f"kairos_cpu-{key}.so"
    if not lib_path.is_file():
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            logger.info("no C compiler: CPU kernels disabled (torch paths)")
            return None
        try:
            lib_path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=lib_path.parent) as tmp:
                out = Path(tmp) / lib_path.name
                subprocess.run([cc, *cflags, "-o", str(out), *map(str, SOURCES), "-lm"], check=True, capture_output=True, timeout=120)
                out.replace(lib_path)  # atomic: a concurrent start sees all or nothing
            for old in lib_path.parent.glob("kairos_cpu-*.so"):  # builds of older sources
                if old != lib_path:
                    old.unlink(missing_ok=True)
        except (OSError, subprocess.SubprocessError) as e:
            logger.warning("could not build the CPU kernels (%s): torch paths", e)
            return None
    # torch is imported first, so the library's libgomp.so.1 resolves to the OpenMP runtime torch
    # already loaded: one thread pool, sized by torch.set_num_threads.
    lib = ctypes.CDLL(str(lib_path))
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, _RESTYPES.get(name)
    choice = os.environ.get(ISA_ENV) or "auto"
    if choice not in ISA_CHOICES:
        logger.warning("%s=%s is not one of %s: auto", ISA_ENV, choice, ISA_CHOICES)
        choice = "auto"
    lib.kairos_set_isa(isa_bits(flags, choice))
    _isa[0] = choice
    return lib


@dataclass(frozen=True)
class GGUFWeight:
    """A ``[N, K]`` weight as the kernels read it: GGUF's quantized values, the block scales
    (and Q4_1 offsets) apart as float16 ``[N, K / 32]`` (as the file stores them)."""

    kind: str  # q4_1 | q8_0
    qs: torch.Tensor  # q4_1: uint8 [N, K / 2] (GGUF nibble order); q8_0: int8 [N, K]
    d: torch.Tensor
    m: torch.Tensor | None  # q4_1 only

    @classmethod
    def from_blocks(cls, kind: str, blocks: torch.Tensor) -> GGUFWeight:
        """From GGUF blocks ``uint8 [N, K / 32 * BLOCK_BYTES[kind]]`` (llama.cpp's layout)."""
        n, nb = blocks.shape[0], blocks.shape[1] // BLOCK_BYTES[kind]
        b = blocks.view(n, nb, BLOCK_BYTES[kind])

        def scale(lo: int) -> torch.Tensor:  # the f16 at byte ``lo`` of every block: [N, nb]
            return b[:, :, lo : lo + 2].contiguous().view(torch.float16).reshape(n, nb)

        if kind == "q4_1":  # {f16 d, f16 m, 16 bytes of nibbles}
            return cls(kind, b[:, :, 4:].reshape(n, nb * 16).contiguous(), scale(0), scale(2))
        return cls(kind, b[:, :, 2:].reshape(n, nb * 32).contiguous().view(torch.int8), scale(0), None)  # {f16 d, 32 int8}

    @property
    def shape(self) -> tuple[int, int]:
        return self.d.shape[0], self.d.shape[1] * 32


def gguf_gemm(x: torch.Tensor, w: GGUFWeight, tiled: bool | None = None, int8_activations: bool = False) -> torch.Tensor:
    """``x [M, K]`` float32 (rows may be strided) times ``w [N, K]`` -> ``[M, N]`` float32.
    ``tiled``: None picks the kernel by M (``csrc/gguf_gemm.c: gguf_matmul``), True forces the
    batch kernel (``gguf_gemm_tiled.c``), False the few-row one. ``int8_activations`` (with
    ``tiled=None``): where the few-row kernel would run, x is quantized to int8 per block of 32
    first (``gguf_gemm_q8.c``, llama.cpp's arithmetic). The caller checked :func:`load`."""
    if int8_activations and tiled is not None:
        raise ValueError("int8_activations picks its kernel by M: leave tiled as None")
    if x.stride(-1) != 1:
        x = x.contiguous()
    n, k = w.shape
    y = torch.empty((x.shape[0], n), dtype=torch.float32)
    rc = load().gguf_matmul(0 if w.kind == "q4_1" else 1, x.data_ptr(), x.shape[0], k, x.stride(0), w.qs.data_ptr(),
                            w.d.data_ptr(), None if w.m is None else w.m.data_ptr(), n, y.data_ptr(), y.stride(0),
                            2 if int8_activations else -1 if tiled is None else int(tiled))
    if rc != 0:
        raise MemoryError("gguf_gemm: no memory for the packed or quantized activations")
    return y


def dequantize(w: GGUFWeight) -> torch.Tensor:
    """``w`` as dense float32 ``[N, K]``, the values gguf-py's dequantize gives."""
    n, k = w.shape
    out = torch.empty((n, k), dtype=torch.float32)
    if w.kind == "q4_1":
        load().dequant_q4_1(w.qs.data_ptr(), w.d.data_ptr(), w.m.data_ptr(), n, k, out.data_ptr())
    else:
        load().dequant_q8_0(w.qs.data_ptr(), w.d.data_ptr(), n, k, out.data_ptr())
    return out


def decode_attention_supported(num_heads: int, num_kv_heads: int, head_dim: int) -> bool:
    return load() is not None and head_dim % 8 == 0 and head_dim <= 128 and num_heads // num_kv_heads <= 16


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor,
                           lens: torch.Tensor, scale: float) -> torch.Tensor:
    """``q [B, Hq, D]`` float32 (rows may be strided), caches ``[NB, bs, Hkv, D]``, ``tables [B, n]``
    and ``lens [B]`` int32 -> ``[B, Hq, D]``; see ``csrc/paged_attention.c``."""
    b, hq, d = q.shape
    if q.stride(2) != 1 or q.stride(1) != d:
        q = q.contiguous()
    out = torch.empty((b, hq, d), dtype=torch.float32)
    load().paged_decode_attention(q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
                                  tables.data_ptr(), tables.stride(0), lens.data_ptr(), b, hq, k_cache.shape[2], d,
                                  k_cache.shape[1], scale, out.data_ptr())
    return out


def add_rms_norm(x: torch.Tensor | None, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``residual += x`` (in place; skipped when ``x`` is None), then RMSNorm of it: ``[M, H]`` float32."""
    out = torch.empty_like(residual)
    load().add_rms_norm(None if x is None else x.data_ptr(), residual.data_ptr(), weight.data_ptr(),
                        residual.shape[0], residual.shape[1], eps, out.data_ptr())
    return out


def rope_store_kv(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int, cos: torch.Tensor,
                  sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor) -> None:
    """RoPE in place on the q and k parts of ``qkv [T, (Hq + 2 Hkv) * D]`` (rows contiguous),
    ``cos``/``sin [T, D]``; then k and v go to the caches at ``slots [T]`` (int64)."""
    load().rope_store_kv(qkv.data_ptr(), qkv.shape[0], qkv.stride(0), num_heads, num_kv_heads, head_dim,
                         cos.data_ptr(), sin.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr())


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``[M, 2I]`` (gate | up) -> ``silu(gate) * up [M, I]``, float32."""
    m, i2 = gate_up.shape
    out = torch.empty((m, i2 // 2), dtype=torch.float32)
    load().silu_mul(gate_up.data_ptr(), m, i2 // 2, out.data_ptr())
    return out


class _QLinear(ctypes.Structure):  # csrc/decode_stack.c: qlinear_t
    _fields_ = [("kind", _i64), ("N", _i64), ("K", _i64), ("qs", _ptr), ("d", _ptr), ("m", _ptr), ("bias", _ptr)]


class _Layer(ctypes.Structure):  # csrc/decode_stack.c: layer_t
    _fields_ = [("input_norm", _ptr), ("post_norm", _ptr), ("qkv", _QLinear), ("o", _QLinear), ("gate_up", _QLinear),
                ("down", _QLinear), ("k_cache", _ptr), ("v_cache", _ptr)]


@dataclass(frozen=True)
class StackLayer:
    """One decoder layer as :func:`decode_stack` reads it (every tensor float32 and contiguous)."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: tuple[GGUFWeight, torch.Tensor | None]  # (weight, bias)
    o: tuple[GGUFWeight, torch.Tensor | None]
    gate_up: tuple[GGUFWeight, torch.Tensor | None]
    down: tuple[GGUFWeight, torch.Tensor | None]
    k_cache: torch.Tensor
    v_cache: torch.Tensor


def _qlinear(w: GGUFWeight, bias: torch.Tensor | None) -> _QLinear:
    n, k = w.shape
    return _QLinear(0 if w.kind == "q4_1" else 1, n, k, w.qs.data_ptr(), w.d.data_ptr(),
                    None if w.m is None else w.m.data_ptr(), None if bias is None else bias.data_ptr())


def stack_table(layers: list[StackLayer]) -> ctypes.Array:
    """The C table of ``layers``: raw pointers, valid while those tensors live (keep them)."""
    table = (_Layer * len(layers))()
    for row, ly in zip(table, layers):
        row.input_norm, row.post_norm = ly.input_norm.data_ptr(), ly.post_norm.data_ptr()
        row.qkv, row.o, row.gate_up, row.down = (_qlinear(*ly.qkv), _qlinear(*ly.o), _qlinear(*ly.gate_up),
                                                 _qlinear(*ly.down))
        row.k_cache, row.v_cache = ly.k_cache.data_ptr(), ly.v_cache.data_ptr()
    return table


def decode_stack(table: ctypes.Array, hidden: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int,
                 intermediate: int, cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor, tables: torch.Tensor,
                 lens: torch.Tensor, block_size: int, eps: float, scale: float, final_norm: torch.Tensor,
                 int8_activations: bool = False) -> torch.Tensor:
    """Every layer of ``table`` on one decode token per sequence, then the final norm.

    ``hidden [M, H]`` float32 embeddings (overwritten: it carries the residual stream),
    ``cos``/``sin [M, D]``, ``slots [M]`` int64, ``tables [M, n]`` and ``lens [M]`` int32 as for
    :func:`paged_decode_attention` -> ``[M, H]``. ``int8_activations``: as for :func:`gguf_gemm`."""
    m, h = hidden.shape
    out = torch.empty_like(hidden)
    rc = load().decode_stack(ctypes.addressof(table), len(table), m, h, num_heads, num_kv_heads, head_dim, intermediate,
                             hidden.data_ptr(), cos.data_ptr(), sin.data_ptr(), slots.data_ptr(), tables.data_ptr(),
                             tables.stride(0), lens.data_ptr(), block_size, eps, scale, final_norm.data_ptr(),
                             out.data_ptr(), 2 if int8_activations else -1)
    if rc != 0:
        raise MemoryError("decode_stack: no scratch memory")
    return out
