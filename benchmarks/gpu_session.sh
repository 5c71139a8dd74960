#!/usr/bin/env bash
# Issue 8's GPU work on a lent machine, in as few device calls as it takes (each at most 10 min).
# Here first: python benchmarks/gpu_kit.py (builds .gpukit/). Then, through the device tool, with
# carry [".gpukit"], one stage per call:
#   bash benchmarks/gpu_session.sh tests    # the whole suite on the GPU (GPU tests unskipped)    ~3 min
#   bash benchmarks/gpu_session.sh bench    # gpu.py: start-up, batch-1 decode vs roofline, attention ~4 min
#   bash benchmarks/gpu_session.sh offline  # gpu.py: 256 x (100-1024 in / out) vs HF generate     ~6 min
#   bash benchmarks/gpu_session.sh host     # async_sched.py, host_step.py, api_stream.py           ~4 min
# Logs and JSON land in $OUT (the device tool brings them back). The default model runs with
# --load-format dummy (its GGUF cannot travel): same shapes, same work per step.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?stage: tests, bench, offline or host}
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
  python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, \
transformers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" || true
} 2>&1 | log
# each step runs even when one before it failed; the stage's exit status says whether any did
rc=0
step() { "$@" 2>&1 | log || { rc=1; echo "FAILED: $*" | log; }; }
case "$stage" in
  tests)
    step python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py tests/test_triton_attention.py \
      tests/test_decode_graphs.py tests/test_capture_record.py
    step timeout 420 python3 -m pytest -q -p no:cacheprovider tests ;;
  bench)
    step python3 benchmarks/gpu.py "${model[@]}" --parts startup,decode,attention --out "$OUT/gpu_bench.json" ;;
  offline)
    step python3 benchmarks/gpu.py "${model[@]}" --parts offline --out "$OUT/gpu_offline.json" ;;
  host)
    step python3 benchmarks/async_sched.py --tokenizer "$kit/model"
    step python3 benchmarks/host_step.py --batch 64,256 --prompt-len 100,1000 --tokenizer "$kit/model"
    step python3 benchmarks/api_stream.py --tokenizer "$kit/model" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
exit $rc
