"""What a start learned about capturing decode graphs, kept for the next start on the same stack.

CUDA graphs cannot be saved, but what it took to trust them can: after a capture, every size
was replayed against the eager step (engine.decode_graphs), which costs an eager forward per
size and leaves a record of the sizes that matched (or the one that did not). A restart on the
same stack — model file, dtype, GPU, the CUDA runtime, torch and Triton versions, the
sources of the forward and the kernels, the capture sizes and table width — captures the sizes
that held without checking them again (and checks any other), or, when a check failed, skips
capture altogether. Anything
that changes the stack changes the key, so a record is never applied to code it did not see.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import msgspec
import torch

logger = logging.getLogger(__name__)
CUDA_GRAPH_BUDGET_S = 60.0  # start-up time capture may take; sizes left over run eagerly


class CaptureRecord(msgspec.Struct, frozen=True):
    good: list[int]  # sizes captured whose replay matched the eager step
    bad: int | None  # the size whose replay disagreed (graphs off on this stack), or None
    seconds: float  # capture time of the start that checked them


def _sources_digest() -> str:
    """The code a captured step runs: the model definitions, attention, graph buffers, kernels."""
    root = Path(__file__).resolve().parents[1]
    files = (sorted((root / "models").glob("*.py")) + [root / "layers" / "attention.py"]
             + [root / "worker" / f for f in ("decode_graphs.py", "runner.py")])
    files += sorted((root / "kernels").glob("*triton*.py"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def model_key(path: Path, load_format: str = "auto") -> str:
    """A model file's cache key, or for a directory the keys of the files in it; dummy weights
    apart (a replay checked against near-zero weights says little of the real ones)."""
    from kairos.loader.tokenizer import file_key

    if path.is_file():
        key = file_key(path)
    else:
        key = hashlib.sha256("".join(file_key(f) for f in sorted(path.iterdir()) if f.is_file()).encode()).hexdigest()
    return key if load_format == "auto" else f"{key}:{load_format}"


def stack_key(model: str, device: torch.device, dtype: torch.dtype, sizes: list[int], max_blocks: int,
              block_size: int) -> str:
    """The record's key: everything that can change whether a replay matches the eager step."""
    parts: dict[str, object] = {"model": model, "dtype": str(dtype), "sizes": sorted(sizes),
                                "max_blocks": max_blocks, "block_size": block_size, "torch": torch.__version__,
                                "sources": _sources_digest()}
    if device.type == "cuda":
        import triton

        props = torch.cuda.get_device_properties(device)
        parts.update(gpu=props.name, capability=[props.major, props.minor], cuda=torch.version.cuda,
                     triton=triton.__version__)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def load(directory: Path, key: str) -> CaptureRecord | None:
    try:
        return msgspec.json.decode((directory / f"{key}.json").read_bytes(), type=CaptureRecord)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as e:  # a torn or foreign file: capture and check afresh
        logger.warning("decode graphs: ignoring the capture record %s (%s)", key, e)
        return None


def save(directory: Path, key: str, record: CaptureRecord) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(record))
        os.replace(tmp, directory / f"{key}.json")  # atomic: a concurrent start reads all or nothing
    except OSError as e:  # a read-only cache costs the next start its checks, nothing else
        logger.warning("decode graphs: could not keep the capture record (%s)", e)


def start_decode_graphs(runner, max_num_seqs: int, max_model_len: int, model_path: Path, load_format: str) -> None:
    """Capture the decode graphs of a CUDA runner at start-up, within ``CUDA_GRAPH_BUDGET_S``
    (sizes left over run eagerly); a capture that fails leaves every decode step eager."""
    from kairos.loader.tokenizer import cache_dir
    from kairos.worker.decode_graphs import capture_sizes, cuda_capture

    try:
        enable_decode_graphs(runner, capture_sizes(max_num_seqs), max_model_len, cuda_capture(), CUDA_GRAPH_BUDGET_S,
                             model_key(model_path, load_format), cache_dir() / "graphs")
    except Exception as e:  # noqa: BLE001 - eager steps work
        runner.graphs = None
        logger.warning("decode graphs: capture failed (%s: %s); decode steps run eagerly", type(e).__name__, e)


def enable_decode_graphs(runner, sizes: list[int], max_model_len: int, capture, budget_s: float,
                         model: str, directory: Path) -> None:
    """``runner.enable_decode_graphs`` guided by the record of an earlier start on this stack
    (``runner``: an ``engine.runner.ModelRunner``; ``model``: its ``model_key``), and the record of
    this one kept for the next."""
    max_blocks = -(-max_model_len // runner.block_size)
    key = stack_key(model, runner.device, runner.kv_caches[0][0].dtype, sizes, max_blocks,
                    runner.block_size)
    record = load(directory, key)
    if record is not None and record.bad is not None:
        logger.warning("decode graphs: a replay at batch %d disagreed with the eager step when this stack was "
                       "last checked; decode steps run eagerly (delete %s to check again)", record.bad,
                       directory / f"{key}.json")
        return
    trusted = frozenset(record.good) if record is not None else frozenset()
    # every size is captured (a start that ran out of budget left some out: they are checked now)
    graphs = runner.enable_decode_graphs(sizes, max_model_len, capture, budget_s, trusted)
    logger.info("decode graphs: %s captured in %.1f s%s", sorted(graphs.graphs) or "none", graphs.seconds,
                " (checks skipped: this stack's record)" if trusted else "")
    # a size stays trusted even when this start's budget left it out
    good = sorted(set(graphs.graphs) | trusted) if graphs.failed_at is None else sorted(graphs.graphs)
    if graphs.failed_at is not None or good != sorted(trusted):
        save(directory, key, CaptureRecord(good, graphs.failed_at, graphs.seconds))
