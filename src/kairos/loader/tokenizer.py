"""Tokenizer and chat template: from a HF directory, or converted from GGUF metadata (cached)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from kairos.loader.hf_dir import has_tokenizer


def cache_dir() -> Path:
    """Kairos' on-disk cache: $KAIROS_CACHE_DIR, else $XDG_CACHE_HOME/kairos, else ~/.cache/kairos."""
    if os.environ.get("KAIROS_CACHE_DIR"):
        return Path(os.environ["KAIROS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kairos"


def file_key(path: Path) -> str:
    """Cache key of a model file: its resolved path, size and modification time."""
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def load_tokenizer(path: Path):
    """A transformers tokenizer for a model path, or None when a HF directory ships none."""
    if path.is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path)) if has_tokenizer(path) else None
    # Converting a GGUF vocabulary takes ~10 s; keep the converted tokenizer.json keyed by the file.
    cached = cache_dir() / "tokenizers" / file_key(path)
    if (cached / "tokenizer.json").is_file():
        # Our own conversion, a plain tokenizer.json: the generic fast class loads it without
        # AutoTokenizer's imports (torch among them: seconds of a server's cold start).
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(cached))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent))
        tok.save_pretrained(str(tmp))
        os.replace(tmp, cached)  # atomic: a concurrent loader sees all or nothing
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True) if "tmp" in locals() else None
    return tok
