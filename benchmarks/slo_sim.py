"""SLO scheduling in virtual time: the real engine (scheduler, admission, calibration, expiry,
its online cost model) on a tiny random model, with every step charged the time a known
"hardware" model says it takes. The same seed gives the same answer, so a change to the SLO
machinery can be compared with a baseline on many seeds in a minute, without the ±10 met of a
run on a real server (``slo_admission.py``, which stays the measure of record).

    python benchmarks/slo_sim.py [--baseline REV] [--seeds 21-28] [--scenarios cold,idle-burst,overload]
        [--jitter 0.1] [--spikes 0.01] [--drift 0.2] [--set key=value ...] [--per-seed] [--log FILE]

REV must be 43fd0b5 or later (EngineCore takes the ``timer`` the simulation drives).

Scenarios run one after the other on one engine, with 12 s of (virtual) idle before each but
the first, as ``slo_admission.py`` runs them on one server, on that script's very requests
(``cold``, ``idle-burst``, ``overload``; prompt lengths in the default model's tokens), plus
``batch-overload``: 90 batch requests (deadline 20 s; 32-256 in, 16-96 out) at 2 req/s.

The hardware: ``TRUTH``, the cost model a server of the default model had fitted on this 2-core
CPU by the end of ``slo_admission.py``'s overload scenario (its ``/stats``), times a lognormal
jitter (``--jitter``, its sigma), with probability ``--spikes`` a 3x stall, and the host's slow
spells (``--drift``: the sigma of the log of a slowdown that drifts back to none over 3 s);
plus ``LOOP_S`` per step that the engine's timer does not see (the loop around the step, the
API server's share of the CPU). Requests arrive between steps, as on a server. Not modelled:
the HTTP layer, tokenization, a fresh process's slower first steps, async scheduling; how close
it comes to real servers is in ``docs/benchmarks.md`` ("Session 14").
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile

# (the step's fixed cost, per 100 prefill tokens, per 10 decode rows, per 1000 context tokens,
# a step with prefill) in seconds: a server of the default model on this CPU, 2026-11-24
TRUTH = (0.008, 0.17, 0.020, 0.0062, 0.025)
LOOP_S = 0.003
IDLE_S = 12.0
DRIFT_S = 3.0
DRIFT = 0.2  # (the default sigma: where the simulator came closest to real servers)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # (slo_admission's scenarios)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # (which slo_admission imports)


def scenario_specs(names: list[str], seed: int) -> dict[str, list[list]]:
    """Rounds of ``RequestSpec`` per scenario: ``slo_admission.py``'s own, and ``batch-overload``."""
    from kairos.bench.workloads import Length, build_workload
    from kairos.loader import load_tokenizer, resolve_model_path
    from slo_admission import BATCH, scenarios

    tok = load_tokenizer(resolve_model_path("default"))  # (prompt lengths in the default model's tokens)
    every = scenarios(tok, 60, 3, seed)
    every["batch-overload"] = [build_workload(
        num_requests=90, rate=2.0, arrival="poisson", burstiness=1.0, input_len=Length("uniform", 32, 256),
        output_len=Length("uniform", 16, 96), prefix_len=0, num_prefix_groups=1, slo_classes=[BATCH], turns=1,
        tokenizer=tok, seed=seed + 200)]
    unknown = set(names) - set(every)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {', '.join(every)}")
    return {name: every[name] for name in names}


class HostDrift:
    """The host's slow spells, a function of (virtual) time alone: the log of the slowdown drifts
    back to none over ``DRIFT_S`` (an Ornstein-Uhlenbeck path on a grid of ``dt``), with its own
    random stream, so two builds meet the same spells at the same times however their steps fall
    (common random numbers: the difference of their results is theirs, not the noise's)."""

    def __init__(self, sigma: float, rng: random.Random, start: float, dt: float = 0.05):
        self.sigma, self.rng, self.dt = sigma, rng, dt
        self.t = start  # (the grid's origin: the clock's start, the same for every build)
        self.log_slow = 0.0

    def at(self, t: float) -> float:
        """The slowdown factor at time ``t`` (times asked never go back)."""
        keep = math.exp(-self.dt / DRIFT_S)
        while self.t + self.dt <= t:
            self.log_slow = self.log_slow * keep + self.sigma * math.sqrt(1 - keep * keep) * self.rng.gauss(0.0, 1.0)
            self.t += self.dt
        return math.exp(self.log_slow)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def tiny_model(path: str) -> None:
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024)
    tf.LlamaForCausalLM(cfg).save_pretrained(path)


def layout_name(name: str, *modules: str):
    """``name`` from the first of ``modules`` that exists and has it (builds differ in layout)."""
    for module in modules:
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ModuleNotFoundError:
            continue
        if found is not None:
            return found
    raise ImportError(f"{name} is in none of {modules}")


def simulate(model_dir: str, plan: dict[str, list[list]], seed: int, jitter: float, spikes: float, options: dict,
             log=None, drift: float = DRIFT) -> dict:
    """{scenario: [per request: [SLO class, outcome, met]]} of one seed on a fresh engine; each
    request's times (virtual seconds) and what admission promised or said, as JSON lines to ``log``."""
    from kairos.config import EngineConfig
    from kairos.engine.core import EngineCore

    # (a baseline build may predate the package layout of today's)
    SLOInfeasible = layout_name("SLOInfeasible", "kairos.sched.admission", "kairos.engine.admission")
    CostModel = layout_name("CostModel", "kairos.sched.cost_model", "kairos.engine.cost_model")
    step_shape = layout_name("step_shape", "kairos.sched.output", "kairos.engine.sched_output", "kairos.engine.scheduler")
    EngineRequest = layout_name("EngineRequest", "kairos.wire.outputs", "kairos.engine.outputs")
    SamplingParams = layout_name("SamplingParams", "kairos.wire.sampling_params", "kairos.engine.sampling_params")
    SLO = layout_name("SLO", "kairos.wire.slo", "kairos.engine.slo")
    report = layout_name("report", "kairos.wire.slo", "kairos.engine.slo")

    clock, truth = Clock(), CostModel(TRUTH, frozen=True)
    # three random streams: each step's jitter and stalls, the host's slow spells (by time), the
    # prompts' tokens (a change to one draws nothing from the others)
    noise, host, words = random.Random(seed), HostDrift(drift, random.Random(f"drift-{seed}"), clock.t), random.Random(f"words-{seed}")
    config = EngineConfig.from_kwargs(**{"model": model_dir, "device": "cpu", "block_size": 16, "num_blocks": 4096,
                                         "max_num_seqs": 64, "max_num_batched_tokens": 512, **options})
    engine = EngineCore(config, clock=clock, timer=clock)
    results = {}
    for k, (name, rounds) in enumerate(plan.items()):
        for i, specs in enumerate(rounds):
            if k or i:
                clock.t += IDLE_S
            start, queue = clock.t, list(enumerate(specs))
            rec: dict[str, dict] = {}
            while queue or engine.has_unfinished():
                if not engine.has_unfinished() and queue[0][1].send_at + start > clock.t:
                    clock.t = queue[0][1].send_at + start  # idle until the next arrival
                while queue and queue[0][1].send_at + start <= clock.t:
                    j, s = queue.pop(0)
                    rid = f"{name}-{i}-{j}"
                    slo = SLO(s.slo.ttft_ms, s.slo.tpot_ms, s.slo.deadline_ms, name=s.slo.name)
                    cal = engine.slo_admission.stats()  # (the calibration it is admitted by)
                    rec[rid] = {"slo": slo, "arrival": s.send_at + start, "first": None, "n": 0, "ends": 0, "outcome": "ok",
                                "cal": [cal["slo_ttft_calibration"], cal["slo_e2e_calibration"]]}
                    prompt = [words.randrange(3, 300) for _ in range(s.prompt_tokens)]  # (in any tiny vocabulary)
                    params = SamplingParams(max_tokens=s.max_tokens, temperature=0.0, ignore_eos=True)
                    try:
                        engine.add_request(EngineRequest(rid, prompt, params, s.send_at + start, slo))
                    except SLOInfeasible as e:  # (refused at arrival: a server's 429)
                        rec[rid]["outcome"], rec[rid]["why"] = "refused", str(e)
                    else:
                        rec[rid]["promised"] = engine.admission(rid)
                if not engine.has_unfinished():
                    continue
                flight = engine.launch()
                if flight.sched.scheduled:
                    step = truth.step_time(*step_shape(flight.sched.scheduled)) * noise.lognormvariate(0.0, jitter)
                    clock.t += step * host.at(clock.t) * (3.0 if noise.random() < spikes else 1.0)
                for out in engine.finish(flight):
                    r = rec[out.request_id]
                    if out.new_token_ids and r["first"] is None:
                        r["first"] = clock.t
                    r["n"] += len(out.new_token_ids)
                    if out.finished:  # (an expiry ended it at launch, before the step's time)
                        expired = out.finish_reason == "expired"
                        r["end"], r["outcome"] = flight.start if expired else clock.t, "expired" if expired else "ok"
                        r["ends"] += 1
                clock.t += LOOP_S
            rows = results.setdefault(name, [])
            for rid, r in rec.items():
                slo = r.pop("slo")
                if r["outcome"] == "refused":
                    rows.append([slo.name, "refused", False])
                else:
                    got = report(slo, r["arrival"], r["first"], r["end"], r["n"], expired=r["outcome"] == "expired")
                    rows.append([slo.name, r["outcome"], bool(got.slo_met)])
                    r.update(ttft=got.ttft_ms, tpot=got.tpot_ms, e2e=got.e2e_ms)
                if log is not None:
                    r["arrival"] -= start
                    print(json.dumps({"seed": seed, "id": rid, "cls": slo.name, "met": rows[-1][2], **r}), file=log)
    return results


def run_build(src: str | None, args: argparse.Namespace, model_dir: str) -> dict[int, dict]:
    """{seed: simulate(...)} for the build at ``src`` (None: this process's)."""
    if src is None:
        options = {k: value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        log = open(args.log, "w") if args.log else None  # noqa: SIM115 - open for the whole run
        try:
            return {s: simulate(model_dir, scenario_specs(args.scenarios.split(","), s), s, args.jitter,
                                args.spikes, options, log, args.drift) for s in seeds(args.seeds)}
        finally:
            if log is not None:
                log.close()
    cmd = [sys.executable, os.path.abspath(__file__), "--json", "--model-dir", model_dir, "--seeds", args.seeds,
           "--scenarios", args.scenarios, "--jitter", str(args.jitter), "--spikes", str(args.spikes),
           "--drift", str(args.drift)]
    for kv in args.set:
        cmd += ["--set", kv]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": src}, capture_output=True, text=True)
    if done.returncode:  # (a build before EngineCore took a timer cannot run here: 43fd0b5 or later)
        raise SystemExit(f"the baseline's simulation failed:\n{done.stderr[-3000:]}")
    return {int(k): v for k, v in json.loads(done.stdout).items()}


def value(text: str):
    try:
        return json.loads(text)  # (numbers, true/false)
    except json.JSONDecodeError:
        return text


def seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def tally(rows: list) -> dict[str, int]:
    return {"sent": len(rows), "refused": sum(r[1] == "refused" for r in rows),
            "expired": sum(r[1] == "expired" for r in rows), "met": sum(r[2] for r in rows),
            "admitted missed": sum(r[1] != "refused" and not r[2] for r in rows),
            "interactive met": sum(r[2] for r in rows if r[0] == "interactive"),
            "batch met": sum(r[2] for r in rows if r[0] == "batch")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=None, help="git revision to compare with (a worktree under /tmp)")
    ap.add_argument("--seeds", default="21-28", help="a seed, or a range LO-HI")
    ap.add_argument("--scenarios", default="cold,idle-burst,overload",
                    help="comma-separated, run in this order on one engine per seed")
    ap.add_argument("--jitter", type=float, default=0.1, help="sigma of each step's lognormal noise")
    ap.add_argument("--spikes", type=float, default=0.01, help="chance of a step taking 3x")
    ap.add_argument("--drift", type=float, default=DRIFT,
                    help="sigma of the log of a slowdown of the host that drifts back to none over 3 s")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an engine option for both builds (EngineConfig.from_kwargs), e.g. scheduling_policy=edf")
    ap.add_argument("--per-seed", action="store_true", help="also print met per seed")
    ap.add_argument("--log", default=None, help="each request of the current build as a JSON line, to this file")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # (a baseline's run, for its parent)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kairos-sim-") as tmp:
        model_dir = args.model_dir or tmp
        if args.model_dir is None:
            tiny_model(model_dir)
        if args.json:
            print(json.dumps(run_build(None, args, model_dir)))
            return
        builds: dict[str, dict[int, dict]] = {}
        if args.baseline:
            tree = tempfile.mkdtemp(prefix="kairos-baseline-")
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tree, args.baseline], check=True,
                           capture_output=True)
            try:
                builds["baseline"] = run_build(os.path.join(tree, "src"), args, model_dir)
            finally:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=False)
        builds["current"] = run_build(None, args, model_dir)
    names = args.scenarios.split(",")
    cols = list(tally([]))
    print(f"seeds {args.seeds}, jitter {args.jitter}, spikes {args.spikes}, drift {args.drift}" + (f", {args.set}" if args.set else ""))
    print("\n| scenario | build | " + " | ".join(cols) + " |\n|---|---|" + "---:|" * len(cols))
    for name in names:
        for build, runs in builds.items():
            t = tally([row for run in runs.values() for row in run[name]])
            print(f"| {name} | {build} | " + " | ".join(str(t[c]) for c in cols) + " |")
    if args.per_seed:
        for name in names:
            print(f"\n{name}, met per seed: " + "; ".join(
                f"{s}: " + "/".join(str(tally(builds[b][s][name])["met"]) for b in builds) for s in seeds(args.seeds)))


if __name__ == "__main__":
    main()
