"""Dequantized GGUF weights kept as a Hugging Face directory in the cache, so later starts
mmap a safetensors file instead of parsing and dequantizing the GGUF again (~7 s -> <1 s)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from kairos.loader.gguf_file import GGUFModel
from kairos.loader.tokenizer import cache_dir, file_key

BLOCKS_FILE = "gguf_blocks.safetensors"
MAX_CACHED_BYTES = 4 << 30  # float32 copies of bigger models would eat the disk: load those directly

logger = logging.getLogger(__name__)


def cached_hf_dir(path: Path) -> Path | None:
    """The converted directory for a GGUF file, made on first use; None when not cacheable."""
    out = cache_dir() / "models" / file_key(path)
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    gg = GGUFModel(path)
    if sum(int(t.n_elements) for t in gg.reader.tensors) * 4 > MAX_CACHED_BYTES:
        return None
    from safetensors.torch import save_file

    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent))
        save_file({name: w.contiguous() for name, w in gg.weights()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(gg.hf_config()))
        os.replace(tmp, out)  # atomic: a concurrent loader sees all or nothing
    except OSError as e:  # read-only or full cache: load the GGUF directly
        logger.warning("could not cache converted weights in %s: %s", out, e)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return None
    return out


def gguf_blocks(path: Path) -> dict[str, tuple[str, torch.Tensor]]:
    """``{hf name: (kind, uint8 blocks)}`` of a GGUF's Q4_1/Q8_0 weights, kept in the cache after
    the first parse (parsing the GGUF takes seconds, loading this file milliseconds)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    # beside (not inside) the converted directory, which is created atomically as a whole
    out = cache_dir() / "models" / f"{file_key(path)}-{BLOCKS_FILE}"
    if out.is_file():
        with safe_open(str(out), "pt") as f:
            kinds = f.metadata() or {}
            return {name: (kinds[name], f.get_tensor(name)) for name in f.keys()}  # noqa: SIM118
    blocks = {name: (kind, b) for name, kind, b in GGUFModel(path).blocks()}
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({n: b for n, (_, b) in blocks.items()}, str(tmp), metadata={n: k for n, (k, _) in blocks.items()})
        os.replace(tmp, out)  # atomic: a concurrent loader sees all or nothing
    except OSError as e:
        tmp.unlink(missing_ok=True)
        logger.warning("could not cache GGUF blocks in %s: %s", out, e)
    return blocks
