#!/usr/bin/env bash
# kairos bench against two kairos serve configurations (prefix cache on / off), then compare.
# Usage: bash benchmarks/bench_prefix_compare.sh [extra kairos bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
K=${KAIROS:-.venv/bin/kairos}
mkdir -p results
WORKLOAD=(--num-requests 40 --rate 1.5 --arrival poisson --input-len 64 --output-len 48 --prefix-len 400
          --num-prefix-groups 4 --slo "interactive:ttft_ms=2000,tpot_ms=300" --slo "batch:deadline_ms=30000" "$@")
for mode in prefix-cache no-prefix-cache; do
  $K serve --port 8123 --$mode > "results/serve_$mode.log" 2>&1 &
  pid=$!
  until curl -sf localhost:8123/health > /dev/null; do sleep 0.5; done
  $K bench --base-url http://127.0.0.1:8123 "${WORKLOAD[@]}" --out "results/bench_$mode"
  kill -TERM $pid; wait $pid || true
done
$K bench compare results/bench_no-prefix-cache.json results/bench_prefix-cache.json
