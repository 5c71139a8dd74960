"""Keep the collector off the start-up heap.

After start-up a process holds some 350k tracked objects (torch, transformers, the tokenizer,
the model's modules) that live until exit. CPython's oldest-generation collection walks all of
them whenever enough new objects have survived, a pause of ~160 ms in the middle of a step at
batch 256 (benchmarks/host_step.py) — a stall every token of every running request feels, and
a fifth of the host time of that run. ``gc.freeze()`` moves them out of the collector's reach;
later objects are collected as before. vLLM and SGLang freeze their heaps likewise.
"""

from __future__ import annotations

import atexit
import gc


def freeze_startup_heap() -> None:
    """Collect once, then freeze what is left; called by each process's entry point when its
    start-up is done (the engine process, the API server, the offline ``LLM``)."""
    gc.collect()
    gc.freeze()
    # unfrozen at exit so that extension modules (Triton's nanobind) see their objects freed;
    # unregister first: one handler however many times a process freezes
    atexit.unregister(gc.unfreeze)
    atexit.register(gc.unfreeze)
