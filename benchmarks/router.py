"""Routing policies side by side: two replicas of the default model behind `kairos serve
--replicas 2` (one core each), the same workload through each policy in one run.

    python benchmarks/router.py [--figure chat,slo] [--policies round_robin,cache_aware,slo]
                                [--requests 64] [--upstream URL --upstream URL]

chat: multi-turn chat sessions over shared system prompts (`kairos bench --turns 4 --prefix-len
512 --num-prefix-groups 8`) at a moderate rate: TTFT p50 per policy, and its ratio to round_robin's.
slo: an interactive class (TTFT 1 s, TPOT 150 ms) and a batch class (deadline 60 s), drawn at random,
Poisson arrivals at --load x the pair's capacity (measured first: requests/s of a burst through
round_robin, no SLOs): goodput (requests within their SLO per second of the run, its drain
included), requests within their SLO, and admitted interactive attainment per policy.
--upstream: route over servers already running (vLLM, SGLang, ...) instead of starting Kairos
replicas; the router then has no replica's cost model or cache report.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import httpx
from rich.console import Console

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from kairos.bench.config import BenchConfig  # noqa: E402
from kairos.bench.main import run_bench  # noqa: E402
from server_helpers import free_port  # noqa: E402


class Fleet:
    """`kairos serve --replicas 2` (or `kairos router` over ``upstream``) with one policy."""

    def __init__(self, policy: str, upstream: list[str], extra: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = (["router", *(a for u in upstream for a in ("--upstream", u)), "--tokenizer", "default"] if upstream
               else ["serve", "--replicas", "2", *extra])
        self.proc = subprocess.Popen([sys.executable, "-m", "kairos.cli", *cmd, "--port", str(self.port),
                                      "--routing-policy", policy], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                h = httpx.get(self.url + "/health", timeout=1)
                if h.status_code == 200 and h.json().get("replicas_healthy") == h.json().get("replicas"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("the fleet did not come up")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def bench(url: str, out: str, **kw) -> dict:
    cfg = BenchConfig(base_url=url, out=out, plots=False, **kw)
    return run_bench(cfg, Console(quiet=True))["runs"][0]["summary"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--figure", default="chat,slo")
    ap.add_argument("--policies", default="round_robin,cache_aware,slo")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--chat-rate", type=float, default=2.0, help="chat: requests/s")
    ap.add_argument("--load", type=float, default=1.5, help="slo: arrival rate as a multiple of capacity")
    ap.add_argument("--capacity", type=float, default=None, help="slo: skip its measurement (req/s)")
    ap.add_argument("--slo-order", default="random", help="slo: classes drawn at random (round_robin: in turn, "
                    "which round_robin routing over 2 replicas turns into one replica a class)")
    ap.add_argument("--upstream", action="append", default=[])
    ap.add_argument("--out", default="results/router")
    args = ap.parse_args()
    policies = args.policies.split(",")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    rows: dict[str, dict] = {}
    figures = args.figure.split(",")
    capacity = args.capacity
    if "slo" in figures and capacity is None:
        fleet = Fleet("round_robin", args.upstream, [])
        try:
            s = bench(fleet.url, f"{args.out}-capacity", num_requests=args.requests, input_len="128",
                      output_len="64", endpoint="completions", num_warmups=4)
            capacity = s["request_throughput"]
        finally:
            fleet.stop()
        print(f"capacity of the pair: {capacity:.2f} req/s")
    for policy in policies:
        fleet = Fleet(policy, args.upstream, [])
        try:
            row = rows.setdefault(policy, {})
            if "chat" in figures:
                s = bench(fleet.url, f"{args.out}-chat-{policy}", num_requests=args.requests, turns=4, prefix_len=512,
                          num_prefix_groups=8, input_len="64", output_len="32", rate=args.chat_rate, num_warmups=2)
                row |= {"chat_ttft_p50_ms": s["ttft_s"]["p50"] * 1000, "chat_ttft_p90_ms": s["ttft_s"]["p90"] * 1000,
                        "chat_completed": s["completed"]}
            if "slo" in figures:
                s = bench(fleet.url, f"{args.out}-slo-{policy}", num_requests=args.requests, input_len="128",
                          output_len="64", endpoint="completions", rate=capacity * args.load,
                          slo=("interactive:ttft_ms=1000,tpot_ms=150", "batch:deadline_ms=60000"),
                          slo_order=args.slo_order)
                inter = s["classes"]["interactive"]
                admitted = inter["requests"] - inter["refused"]
                row |= {"slo_goodput_rps": s["goodput_rps"], "slo_met": sum(c["met"] for c in s["classes"].values()),
                        "interactive_met": inter["met"], "duration_s": s["duration_s"],
                        "interactive_admitted_attainment": inter["met"] / admitted if admitted else 0.0,
                        "refused": s["refused"]}
            stats = httpx.get(fleet.url + "/stats").json()
            row["prefix_hit_rate"] = stats.get("prefix_cache_hit_rate")
        finally:
            fleet.stop()
        print(policy, json.dumps(rows[policy]))
    base = rows.get("round_robin", {})
    print(f"\n| policy | {' | '.join(k for k in next(iter(rows.values())))} |")
    print("|---" * (1 + len(next(iter(rows.values())))) + "|")
    for policy, row in rows.items():
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()]
        print(f"| {policy} | {' | '.join(cells)} |")
    for key in ("chat_ttft_p50_ms", "slo_goodput_rps"):
        if key in base and base[key]:
            print(key, "ratio to round_robin:", {p: round(r[key] / base[key], 3) for p, r in rows.items() if key in r})
    with open(args.out + ".json", "w") as f:
        json.dump({"capacity_rps": capacity, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
