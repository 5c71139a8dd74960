"""Goodput under SLOs: Kairos' deadline-aware scheduling (slack) vs first-come-first-served, same build.

    python benchmarks/slo_goodput.py [--requests 40] [--loads 0.5,1,1.5,2]

Workload: half interactive requests (TTFT 1 s, TPOT 150 ms; 64 in / 32 out), half batch
requests (deadline 60 s; 256 in / 128 out), Poisson arrivals. Capacity is measured first
(requests/s completed by an FCFS server under a burst as large as a run); each load is a multiple of it.
`fcfs` is the mainstream engine's behaviour: FCFS order, no SLO sent (SLOs judged by the
client). `slack` sends the SLOs: least-slack ordering, admission control, expiry, preemption.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from kairos.bench.metrics import summarize, tpot, ttft  # noqa: E402
from kairos.bench.runner import Target, run_load  # noqa: E402
from kairos.bench.workloads import SLO, PromptMaker, RequestSpec, arrival_times  # noqa: E402
from kairos.loader import load_tokenizer, resolve_model_path  # noqa: E402
from server_helpers import free_port  # noqa: E402

INTERACTIVE = SLO("interactive", ttft_ms=1000, tpot_ms=150)
BATCH = SLO("batch", deadline_ms=60_000)
CLASSES = [(INTERACTIVE, 64, 32), (BATCH, 256, 128)]


def set_slos(ttft_ms: float, tpot_ms: float, deadline_ms: float) -> None:
    global INTERACTIVE, BATCH, CLASSES
    INTERACTIVE = SLO("interactive", ttft_ms=ttft_ms, tpot_ms=tpot_ms)
    BATCH = SLO("batch", deadline_ms=deadline_ms)
    CLASSES = [(INTERACTIVE, 64, 32), (BATCH, 256, 128)]


def workload(n: int, rate: float, tok, seed: int) -> list[RequestSpec]:
    rng = random.Random(seed)
    maker = PromptMaker(tok, rng)
    specs = []
    for i, t in enumerate(arrival_times(n, rate, "poisson", rng)):
        slo, n_in, n_out = CLASSES[i % 2]
        text, n_tok = maker.make(n_in)
        specs.append(RequestSpec(i, t, text, n_tok, n_out, slo))
    return specs


class Server:
    def __init__(self, policy: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "kairos.cli", "serve", "--port", str(self.port),
                                      "--scheduling-policy", policy], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        # warm up the cost model with a few requests of both shapes
        asyncio.run(run_load(workload(6, float("inf"), TOK, 99), Target(self.url, "default", "completions", False), len))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def run(server: Server, specs, send_slo: bool):
    records, _ = asyncio.run(run_load(specs, Target(server.url, "default", "completions", send_slo), len))
    slos = {s.name: s for s, _, _ in CLASSES}
    s = summarize(records, slos)
    inter_ok = [r for r in records if r.slo_class == "interactive" and r.outcome == "ok"]
    admitted_met = [r for r in inter_ok if INTERACTIVE.met(ttft(r), tpot(r), r.end_s - r.sent_s)]
    s["interactive_admitted_attainment"] = len(admitted_met) / len(inter_ok) if inter_ok else 0.0
    return s


def main() -> None:
    global TOK
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--loads", default="0.5,1,1.5,2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--capacity-requests", type=int, default=40, help="burst size that measures capacity")
    ap.add_argument("--ttft-ms", type=float, default=1000, help="interactive TTFT objective")
    ap.add_argument("--tpot-ms", type=float, default=150, help="interactive TPOT objective")
    ap.add_argument("--deadline-ms", type=float, default=60_000, help="batch deadline")
    args = ap.parse_args()
    set_slos(args.ttft_ms, args.tpot_ms, args.deadline_ms)
    TOK = load_tokenizer(resolve_model_path("default"))
    loads = [float(x) for x in args.loads.split(",")]

    fcfs = Server("fcfs")
    burst = run(fcfs, workload(args.capacity_requests, float("inf"), TOK, args.seed + 1), send_slo=False)
    capacity = burst["request_throughput"]
    print(f"measured capacity (FCFS, burst of {args.capacity_requests} mixed requests): {capacity:.3f} req/s", flush=True)
    results = {}
    for policy, server, send in (("fcfs", fcfs, False), ("slack", None, True)):
        if server is None:
            fcfs.stop()
            server = Server("slack")
        for load in loads:
            results[(policy, load)] = run(server, workload(args.requests, load * capacity, TOK, args.seed), send)
            r = results[(policy, load)]
            print(f"  {policy} @ {load}x: goodput {r['goodput_rps']:.3f} req/s, attainment {r['slo_attainment']:.0%}",
                  flush=True)
        server.stop()

    print(f"\nworkload: {args.requests} requests, 50% interactive (TTFT {args.ttft_ms:g} ms, TPOT {args.tpot_ms:g} ms; "
          f"64/32 tokens), 50% batch (deadline {args.deadline_ms:g} ms; 256/128 tokens), Poisson; "
          f"capacity {capacity:.3f} req/s")
    head = (f"{'load':>5} {'policy':>6} {'goodput r/s':>11} {'attain':>7} {'inter att':>9} {'inter adm att':>13} "
            f"{'batch att':>9} {'refused':>7} {'TTFT p50 s':>10} {'vs fcfs':>7}")
    print(head)
    for load in loads:
        base = results[("fcfs", load)]["goodput_rps"]
        for policy in ("fcfs", "slack"):
            r = results[(policy, load)]
            c = r["classes"]
            ratio = f"{r['goodput_rps'] / base:.2f}" if base else ("inf" if r["goodput_rps"] else "-")
            print(f"{load:>5} {policy:>6} {r['goodput_rps']:>11.3f} {r['slo_attainment']:>7.0%} "
                  f"{c['interactive']['slo_attainment']:>9.0%} {r['interactive_admitted_attainment']:>13.0%} "
                  f"{c['batch']['slo_attainment']:>9.0%} {r['refused']:>7} {r['ttft_s']['p50'] or 0:>10.2f} {ratio:>7}")


if __name__ == "__main__":
    main()
