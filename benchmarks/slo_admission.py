"""SLO admission: how many requests it refuses that it could have served, before and after a change.

    python benchmarks/slo_admission.py [--baseline REV] [--rounds 3] [--requests 60] [--seed 21]
        [--scenarios cold,idle-burst,overload] [--no-unsent]

Three servers of the default model run the same scenarios, one after the other:
- ``baseline``: the build at git revision REV (a worktree under /tmp), SLOs sent;
- ``current``: this checkout, SLOs sent;
- ``unsent``: this checkout, no SLO sent (every request served, first come first served): which
  requests could have met their objectives had they been admitted.

Scenarios (the same prompts and arrival times for every server):
- ``cold``: on a fresh server, ``--requests`` at 1 req/s (Poisson), alternately interactive
  (TTFT 800 ms, TPOT 120 ms) and batch (deadline 20 s), 32-256 prompt and 16-96 output tokens.
  Admission has no history yet: its cost model starts from defaults.
- ``idle-burst``: ``--rounds`` times, 12 s idle (longer than the step-interval window), then 6 batch
  requests at once (deadline 8 s; 32-256 in, 32-64 out).
- ``overload``: after 12 s idle, 1.5 x ``--requests`` of the cold scenario's mix at 3 req/s, more
  than this 2-core CPU serves: admission must refuse some, and should refuse the right ones.

Per scenario and server: refused, expired, met (goodput: met / sent), admitted requests that missed,
and "refused, met unsent": requests refused that the ``unsent`` server served within their SLO.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from kairos.bench.metrics import tpot, ttft  # noqa: E402
from kairos.bench.runner import Target, run_load  # noqa: E402
from kairos.bench.workloads import SLO, Length, build_workload  # noqa: E402
from kairos.loader import load_tokenizer, resolve_model_path  # noqa: E402
from server_helpers import ServerProcess  # noqa: E402

INTERACTIVE = SLO("interactive", ttft_ms=800, tpot_ms=120)
BATCH = SLO("batch", deadline_ms=20_000)
BURST = SLO("batch", deadline_ms=8_000)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scenarios(tok, requests: int, rounds: int, seed: int) -> dict[str, list[list]]:
    """name -> rounds of request specs (a round starts after 12 s idle, except the first of cold)."""
    def specs(n: int, rate: float, out: Length, classes: list[SLO], seed: int) -> list:
        return build_workload(num_requests=n, rate=rate, arrival="poisson", burstiness=1.0,
                              input_len=Length("uniform", 32, 256), output_len=out, prefix_len=0,
                              num_prefix_groups=1, slo_classes=classes, turns=1, tokenizer=tok, seed=seed)

    mixed = Length("uniform", 16, 96)
    return {"cold": [specs(requests, 1.0, mixed, [INTERACTIVE, BATCH], seed)],
            "idle-burst": [specs(6, float("inf"), Length("uniform", 32, 64), [BURST], seed + 1 + r)
                           for r in range(rounds)],
            "overload": [specs(3 * requests // 2, 3.0, mixed, [INTERACTIVE, BATCH], seed + 100)]}


def met(rec, slo: SLO) -> bool:
    return rec.outcome == "ok" and slo.met(ttft(rec), tpot(rec), rec.end_s - rec.sent_s)


def run_arm(src: str, send_slo: bool, plan: dict[str, list[list]]) -> dict[str, list]:
    """Records (in spec order, rounds concatenated) of each scenario on a fresh server of ``src``."""
    server = ServerProcess(env={"PYTHONPATH": src}, keep_log=False)
    out = {}
    try:
        for name, rounds in plan.items():
            recs = []
            for i, specs in enumerate(rounds):
                if name != "cold" or i:
                    time.sleep(12)  # idle past the step-interval window
                target = Target(server.url, "default", "completions", send_slo, timeout_s=120)
                recs += asyncio.run(run_load(specs, target, len))[0]
            out[name] = recs
    finally:
        server.stop()
    return out


def worktree(rev: str) -> str:
    path = tempfile.mkdtemp(prefix="kairos-baseline-")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, rev], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default=None, help="git revision to compare with (default: none)")
    ap.add_argument("--rounds", type=int, default=3, help="idle-burst rounds")
    ap.add_argument("--requests", type=int, default=60, help="requests of the cold scenario")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--scenarios", default="cold,idle-burst,overload",
                    help="comma-separated, run in this order on each server (each after 12 s idle, but cold)")
    ap.add_argument("--unsent", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the server that is sent no SLO (which refusals could have been served)")
    args = ap.parse_args()
    tok = load_tokenizer(resolve_model_path("default"))
    every = scenarios(tok, args.requests, args.rounds, args.seed)
    plan = {name: every[name] for name in args.scenarios.split(",")}
    arms: dict[str, tuple[str, bool]] = {}
    tree = None
    if args.baseline:
        tree = worktree(args.baseline)
        arms["baseline"] = (os.path.join(tree, "src"), True)
    arms["current"] = (os.path.join(ROOT, "src"), True)
    if args.unsent:
        arms["unsent"] = (os.path.join(ROOT, "src"), False)
    results = {}
    try:
        for arm, (src, send) in arms.items():
            t = time.perf_counter()
            results[arm] = run_arm(src, send, plan)
            print(f"{arm}: {time.perf_counter() - t:.0f} s", flush=True)
    finally:
        if tree:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=False)
    specs = {name: [s for specs in rounds for s in specs] for name, rounds in plan.items()}
    print("\n| scenario | server | sent | refused | expired | met | goodput | admitted missed | refused, met unsent |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in plan:
        could = [met(r, s.slo) for r, s in zip(results["unsent"][name], specs[name])] if args.unsent else None
        for arm in arms:
            recs = results[arm][name]
            ok = [met(r, s.slo) for r, s in zip(recs, specs[name])]
            refused = [r.outcome == "refused" for r in recs]
            admitted_missed = sum(1 for r, m in zip(recs, ok) if r.outcome != "refused" and not m)
            false_refusals = '-' if could is None or arm == "unsent" else sum(1 for f, c in zip(refused, could) if f and c)
            print(f"| {name} | {arm} | {len(recs)} | {sum(refused)} | {sum(r.outcome == 'expired' for r in recs)} "
                  f"| {sum(ok)} | {sum(ok) / len(recs):.0%} | {admitted_missed} | {false_refusals} |")


if __name__ == "__main__":
    main()
