"""Goodput under SLOs: Kairos' deadline-aware scheduling (slack) vs first-come-first-served, same build.

    python benchmarks/slo_goodput.py [--requests 200] [--loads 0.5,1,1.5,2] [--seed 0] [--out runs.json]

Workload: half interactive requests (TTFT 1 s, TPOT 150 ms; 64 in / 32 out), half batch
requests (deadline 60 s; 256 in / 128 out), Poisson arrivals. Capacity is measured first: the
sustained rate (steady part of a 128-request burst, no SLOs) of the first policy's server; each
load is a multiple of it. An admitted request is one not refused at arrival (429); one that
later expires counts against admitted attainment.
With 200 requests a run at 1.5x is mostly a transient (the FCFS backlog is still short when
arrivals stop); `--requests 600 --loads 1.5` shows the sustained overload.
`fcfs` is the mainstream engine's behaviour: FCFS order, no SLO sent (SLOs judged by the
client). `slack` sends the SLOs: least-slack ordering, admission control, expiry, preemption.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


def misses(records, slo) -> dict[str, int]:
    """Why requests of one class missed: refused at arrival, expired while waiting, or which objective."""
    out = {"refused": 0, "expired": 0, "error": 0, "ttft": 0, "tpot": 0, "deadline": 0}
    for r in records:
        if r.outcome in ("refused", "expired"):
            out[r.outcome] += 1
        elif r.outcome != "ok":
            out["error"] += 1
        elif not slo.met(ttft(r), tpot(r), r.end_s - r.sent_s):
            t, p = ttft(r), tpot(r)
            if slo.ttft_ms is not None and (t is None or t * 1000 > slo.ttft_ms):
                out["ttft"] += 1
            elif slo.tpot_ms is not None and p is not None and p * 1000 > slo.tpot_ms:
                out["tpot"] += 1
            else:
                out["deadline"] += 1
    return out


def run(server: Server, specs, send_slo: bool):
    records, _ = asyncio.run(run_load(specs, Target(server.url, "default", "completions", send_slo), len))
    slos = {s.name: s for s, _, _ in CLASSES}
    s = summarize(records, slos)
    # admitted = not refused at arrival; an admitted request that later expired counts as a miss
    inter = [r for r in records if r.slo_class == "interactive" and r.outcome != "refused"]
    met = [r for r in inter if r.outcome == "ok" and INTERACTIVE.met(ttft(r), tpot(r), r.end_s - r.sent_s)]
    s["interactive_admitted_attainment"] = len(met) / len(inter) if inter else 0.0
    s["misses"] = {name: misses([r for r in records if r.slo_class == name], slo) for name, slo in slos.items()}
    s["actual_over_predicted"] = prediction_errors(records)
    return s, records


def prediction_errors(records) -> dict[str, float]:
    """Median actual/predicted first-token and completion times of the admitted SLO requests, from
    the predictions a Kairos server returns in ``usage.kairos`` (< 1: admission was cautious)."""
    out = {}
    for key in ("ttft", "e2e"):
        ratios = sorted(r.server_report[f"{key}_ms"] / r.server_report[f"predicted_{key}_ms"] for r in records
                        if r.server_report and r.server_report.get(f"predicted_{key}_ms")
                        and r.server_report.get(f"{key}_ms") is not None)  # (expired: no first token)
        if ratios:
            out[key] = ratios[len(ratios) // 2]
    return out


def sustained_capacity(records) -> float:
    """Completions per second between the 10th and 90th percentile completion (the ramp-up and the
    drain of a burst are not the engine's sustained rate)."""
    ends = sorted(r.end_s for r in records if r.outcome == "ok")
    lo, hi = len(ends) // 10, len(ends) - 1 - len(ends) // 10
    return (hi - lo) / max(ends[hi] - ends[lo], 1e-9)


def main() -> None:
    global TOK
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--loads", default="0.5,1,1.5,2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--capacity-requests", type=int, default=128, help="burst size that measures capacity")
    ap.add_argument("--capacity", type=float, default=None, help="skip the measurement: req/s")
    ap.add_argument("--policies", default="fcfs,slack")
    ap.add_argument("--ttft-ms", type=float, default=1000, help="interactive TTFT objective")
    ap.add_argument("--tpot-ms", type=float, default=150, help="interactive TPOT objective")
    ap.add_argument("--deadline-ms", type=float, default=60_000, help="batch deadline")
    ap.add_argument("--out", default=None, help="write every record as JSON here")
    args = ap.parse_args()
    set_slos(args.ttft_ms, args.tpot_ms, args.deadline_ms)
    TOK = load_tokenizer(resolve_model_path("default"))
    loads = [float(x) for x in args.loads.split(",")]
    policies = args.policies.split(",")

    capacity = args.capacity
    results, dump = {}, {}
    for policy in policies:
        server = Server(policy)
        if capacity is None:
            burst, brecs = run(server, workload(args.capacity_requests, float("inf"), TOK, args.seed + 1), send_slo=False)
            capacity = sustained_capacity(brecs)
            print(f"measured capacity ({policy} server, no SLOs, burst of {args.capacity_requests} mixed requests, "
                  f"steady part): {capacity:.3f} req/s (whole burst: {burst['request_throughput']:.3f})", flush=True)
        for load in loads:
            r, recs = run(server, workload(args.requests, load * capacity, TOK, args.seed), policy != "fcfs")
            results[(policy, load)] = r
            dump[f"{policy}@{load}"] = [x.to_json() for x in recs]
            print(f"  {policy} @ {load}x: goodput {r['goodput_rps']:.3f} req/s, attainment {r['slo_attainment']:.0%}, "
                  f"misses {r['misses']}, actual/predicted p50 {r['actual_over_predicted']}", flush=True)
        server.stop()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"capacity": capacity, "runs": dump}, f)

    print(f"\nworkload: {args.requests} requests, 50% interactive (TTFT {args.ttft_ms:g} ms, TPOT {args.tpot_ms:g} ms; "
          f"64/32 tokens), 50% batch (deadline {args.deadline_ms:g} ms; 256/128 tokens), Poisson; "
          f"capacity {capacity:.3f} req/s")
    print("| load | policy | goodput r/s | attain | inter att | inter adm att | batch att | refused | expired "
          "| inter miss ttft/tpot | batch miss | TTFT p50 s | vs fcfs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for load in loads:
        base = results.get(("fcfs", load), {}).get("goodput_rps")
        for policy in policies:
            r = results[(policy, load)]
            c, m = r["classes"], r["misses"]
            ratio = "-" if base is None else (f"{r['goodput_rps'] / base:.2f}" if base else
                                              ("inf" if r["goodput_rps"] else "-"))
            print(f"| {load:g} | {policy} | {r['goodput_rps']:.3f} | {r['slo_attainment']:.0%} "
                  f"| {c['interactive']['slo_attainment']:.0%} | {r['interactive_admitted_attainment']:.0%} "
                  f"| {c['batch']['slo_attainment']:.0%} | {r['refused']} | {r['expired']} "
                  f"| {m['interactive']['ttft']}/{m['interactive']['tpot']} | {m['batch']['deadline']} "
                  f"| {r['ttft_s']['p50'] or 0:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
