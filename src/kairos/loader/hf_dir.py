"""Weights from a local Hugging Face directory: config.json + *.safetensors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kairos.loader.default import ModelNotFoundError

if TYPE_CHECKING:
    import torch


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelNotFoundError(f"{path} not found: a Hugging Face model directory needs config.json")
    return json.loads(path.read_text())


def iter_hf_weights(folder: Path, keep: Callable[[str], bool] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from every safetensors shard of the directory, reading only the
    tensors whose name ``keep`` accepts (all by default)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"no *.safetensors file in {folder} (PyTorch .bin checkpoints are not supported)")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open has keys(), no iteration)
                if keep is None or keep(name):
                    yield name, st.get_tensor(name)


def has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()


def generation_eos_ids(path: Path) -> frozenset[int]:
    """Extra end-of-sequence ids from generation_config.json (Llama 3 lists several)."""
    gen = path / "generation_config.json" if path.is_dir() else None
    if gen is None or not gen.is_file():
        return frozenset()
    eos = json.loads(gen.read_text()).get("eos_token_id")
    return frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos])
