#!/usr/bin/env bash
# Issue 8's GPU work on a lent machine, one device call per stage (each at most 10 min).
# Here first: python benchmarks/gpu_kit.py (builds .gpukit/). Then, through the device tool, with
# carry [".gpukit"], in this order (figures first: they are what a GPU session is for):
#   bash benchmarks/gpu_session.sh bench    # gpu.py: start-up, batch-1 decode vs roofline, attention
#   bash benchmarks/gpu_session.sh offline  # gpu.py: 256 x (100-1024 in / out), async and sync steps
#   bash benchmarks/gpu_session.sh hf       # gpu.py: HF generate on 128 of those prompts
#   bash benchmarks/gpu_session.sh tests    # the GPU tests, then the whole suite on the CPU there
#   bash benchmarks/gpu_session.sh host     # host_step.py and api_stream.py with the engine on the GPU
# Logs and JSON land in $OUT (the device tool brings them back); every step has a time limit
# inside the call's, so a slow one still returns what it measured. The default model runs with
# --load-format dummy (its GGUF cannot travel): same shapes, same work per step.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?stage: bench, offline, hf, tests or host}
OUT=${OUT:-/tmp/kairos-gpu-out}
mkdir -p "$OUT"
kit=.gpukit
[ -d "$kit/wheels" ] || { echo "no $kit: run python benchmarks/gpu_kit.py here and carry .gpukit" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$kit"/wheels/*.whl
export PYTHONPATH="$PWD/src:$PWD/tests:/tmp/site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export KAIROS_CACHE_DIR=/tmp/kairos-cache
# KAIROS_GPU_ARGS: more gpu.py flags, e.g. "--device cpu --num-prompts 4 --lens 16,32" to try this
# script on a CPU before GPU time is spent on it
model=(--model "$kit/model" --load-format dummy ${KAIROS_GPU_ARGS:-})
log() { tee -a "$OUT/$stage.log"; }
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  # what the kit relies on in the image, checked before any step spends time
  python3 - <<'PY' || true
import sys, torch, transformers
print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__,
      torch.cuda.is_available() and torch.cuda.get_device_name())
import fastapi, msgspec, zmq, gguf, uvicorn, openai  # noqa: F401 (the carried wheels)
from transformers import AutoConfig, AutoTokenizer
print(AutoConfig.from_pretrained(".gpukit/model").model_type, len(AutoTokenizer.from_pretrained(".gpukit/model")))
PY
  python3 -m pip check 2>&1 | grep -i -E "fastapi|pydantic|starlette|uvicorn|openai|msgspec|zmq|gguf|anyio|h11|idna" || true
} 2>&1 | log
# each step runs even when one before it failed; the stage's exit status says whether any did
rc=0
step() { "$@" 2>&1 | log || { rc=1; echo "FAILED: $*" | log; }; }
left() { local s=$((570 - SECONDS)); echo $((s > 30 ? s : 30)); }  # of the call's 600 s, a margin kept
case "$stage" in
  bench)
    step timeout -s INT "$(left)" python3 benchmarks/gpu.py "${model[@]}" --parts decode,attention,startup \
      --out "$OUT/gpu_bench.json" ;;
  offline)
    step timeout -s INT "$(left)" python3 benchmarks/gpu.py "${model[@]}" --parts offline --out "$OUT/gpu_offline.json" ;;
  hf)
    step timeout -s INT "$(left)" python3 benchmarks/gpu.py "${model[@]}" --parts hf --hf-prompts 128 \
      --out "$OUT/gpu_hf.json" ;;
  tests)
    step timeout -s INT 240 python3 -m pytest -q -p no:cacheprovider -rs --timeout=120 tests/test_gpu.py \
      tests/test_triton_attention.py tests/test_dummy_weights.py
    # the rest were written for a CPU (float32 expectations, a KV cache each): run there, as a
    # check of this Python, torch and transformers; not the Triton tests, which just ran on the
    # GPU (Triton 3.6's interpreter fails with numpy >= 2.4: "only 0-dimensional arrays ...")
    step env CUDA_VISIBLE_DEVICES= timeout -s INT "$(left)" python3 -m pytest -q -p no:cacheprovider --timeout=120 \
      --ignore tests/test_triton_attention.py tests ;;
  host)
    step timeout -s INT 300 python3 benchmarks/host_step.py --batch 64,256 --prompt-len 100,1000 --tokenizer "$kit/model"
    step timeout -s INT "$(left)" python3 benchmarks/api_stream.py --tokenizer "$kit/model" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
exit $rc
