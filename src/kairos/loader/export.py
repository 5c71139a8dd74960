"""A model's configuration and tokenizer without its weights: a small Hugging Face directory that
``load_format='dummy'`` serves with random weights of the same shapes (a GPU machine that cannot
take the weight file still runs the model's exact work per step)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kairos.loader.default import resolve_model_path
from kairos.loader.gguf_file import GGUFModel
from kairos.loader.hf_dir import read_hf_config
from kairos.loader.tokenizer import load_tokenizer

_SIDE_FILES = ("generation_config.json",)


def save_config_dir(model: str, out: Path) -> Path:
    """Write ``model``'s config.json and tokenizer (chat template included) into ``out``; no weights."""
    path = resolve_model_path(model)
    out.mkdir(parents=True, exist_ok=True)
    config = read_hf_config(path) if path.is_dir() else GGUFModel(path).hf_config()
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tok = load_tokenizer(path)
    if tok is not None:
        tok.save_pretrained(str(out))
    if path.is_dir():
        for name in _SIDE_FILES:
            if (path / name).is_file():
                shutil.copy(path / name, out / name)
    return out
