"""Pack what a lent GPU machine lacks to run Kairos' GPU tests and benchmarks/gpu.py, into
``.gpukit/`` (git-ignored), for the ``device`` tool's ``carry``:

    python benchmarks/gpu_kit.py            # here, where pip reaches PyPI
    device run: bash benchmarks/gpu_session.sh tests      (carry: [".gpukit"])
                bash benchmarks/gpu_session.sh bench      (the figures of issue 8)

Those machines reach nothing (no PyPI, no model hub) and take 64 MiB per call: the default
model's GGUF (94 MiB) cannot travel. So the kit holds
- ``model/``: the default model's config.json and tokenizer (3.4 MiB), served there with
  ``--load-format dummy`` (random weights of its shapes: the same work per step);
- ``wheels/``: CPython 3.12 (``--python``) manylinux wheels, at the versions installed here, of every
  distribution Kairos and its tests import that the machine's image does not hold (its list:
  /work/.library/device/KINDS.md, read 2026-11-17), plus a few small ones whose image versions
  are older than what they need here.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOTS = ("kairos", "openai", "pytest", "accelerate")  # the package and what its tests import
# in the 'cuda' image (torch, triton, transformers, ... at their own versions): not carried
_IMAGE = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
charset-normalizer click cloudpickle contourpy cycler filelock fonttools frozenlist fsspec h11
hf-xet httpcore httpx huggingface-hub idna iniconfig jinja2 kiwisolver markdown-it-py markupsafe
matplotlib mdurl mpmath msgpack networkx numpy nvidia-ml-py packaging pillow pip pluggy
prometheus-client psutil pygments pyparsing pytest python-dateutil pyyaml regex requests rich
safetensors setuptools shellingham six sympy tokenizers torch tqdm transformers triton typer
typing-extensions urllib3 uvloop wheel zipp"""
IMAGE = frozenset(_IMAGE.split())
ALWAYS = {"typing-extensions", "anyio"}  # small; pydantic and openai need newer ones than images may hold
ENV = {"sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{n}_x86_64" for n in range(17, 40)]
LIMIT = 64 << 20  # what one device call carries, the repository included
REPO = Path(__file__).resolve().parent.parent


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def needed(python: str) -> dict[str, str]:
    """{distribution: installed version} to carry: the closure of ROOTS' requirements here, minus
    the image's distributions (and what only they need)."""
    todo: list[tuple[str, str]] = [(r, "") for r in ROOTS]  # (distribution, one of the extras asked of it)
    seen, out = set(), {}
    while todo:
        name, extra = todo.pop()
        name = norm(name)
        if (name, extra) in seen or (name in IMAGE and name not in ALWAYS):
            continue
        seen.add((name, extra))
        if name == "kairos":  # from the source tree: where it is not installed (a lent machine) too
            requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        else:
            dist = md.distribution(name)
            out[name] = dist.version
            requires = dist.requires or []
        for text in requires:
            req = Requirement(text)
            env = {**ENV, "python_version": minor(python), "python_full_version": python, "extra": extra}
            if req.marker is None or req.marker.evaluate(env):
                todo += [(req.name, e) for e in sorted(req.extras) or [""]]
    return out


def minor(python: str) -> str:
    return ".".join(python.split(".")[:2])


def download(pins: dict[str, str], dest: Path, python: str) -> None:
    cp = "cp" + minor(python).replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           minor(python), "--implementation", "cp", "--abi", cp, "--abi", "abi3", "--abi", "none", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + [f"{n}=={v}" for n, v in sorted(pins.items())], check=True)


def tree_bytes(repo: Path) -> int:
    """What git would send of the repository: tracked and untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, check=True,
                           capture_output=True).stdout.split(b"\0")
    return sum((repo / f.decode()).stat().st_size for f in files if f and (repo / f.decode()).is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".gpukit")
    ap.add_argument("--model", default="default")
    ap.add_argument("--python", default="3.12.3", help="the machine's Python (3.12.3 on the lent GPU machines)")
    args = ap.parse_args()
    repo = REPO
    out = repo / args.out
    shutil.rmtree(out, ignore_errors=True)
    from kairos.loader import save_config_dir

    save_config_dir(args.model, out / "model")
    pins = needed(args.python)
    download(pins, out / "wheels", args.python)
    got = {norm(w.name.split("-")[0]) for w in (out / "wheels").glob("*.whl")}
    missing = sorted(set(pins) - got)
    if missing:
        sys.exit(f"no wheel came for: {', '.join(missing)}")
    kit = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    total = kit + tree_bytes(repo)
    print(f"{out}: {len(pins)} wheels ({', '.join(f'{n}=={v}' for n, v in sorted(pins.items()))}), "
          f"model config and tokenizer; {kit / 2**20:.1f} MiB, {total / 2**20:.1f} MiB with the repository "
          f"(a call carries at most {LIMIT >> 20} MiB)")
    if total > LIMIT:
        sys.exit("too big for one device call")


if __name__ == "__main__":
    main()
