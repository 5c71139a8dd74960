"""Randomized engine rounds on a tiny random model, in virtual time, checked as they run.

Each round draws an engine (policy, async scheduling on or off, prefix cache on or off, a tiny
KV pool that forces preemption and eviction, a small batch and token budget) and a workload
(shared prefixes, ``n`` > 1, greedy and seeded sampling, SLOs of every kind and priorities,
aborts, stop strings as the detokenizer ends them), and drives the engine as the engine process
does (launch / advance, requests and aborts between steps). The clock moves by a frozen cost
model's time for each step, and now and then by a slow spell of the host, all drawn from the
round's seed, so a round is the same every run.

Checked after every step: every block's reference count equals its references (block tables,
the prefix tree), the free list is exactly the blocks nobody references, without duplicates,
only running sequences hold blocks, and the batch with the siblings still to fork stays within
``max_num_seqs``. Checked at the end: every sequence of every accepted request ended exactly once
and nothing came after its end, greedy tokens equal the Hugging Face reference's prefix (all of
it when the sequence ended by length), and the pool is whole once the tree is evicted.

The test suite runs a few dozen rounds (tests/test_engine_fuzz.py); for a longer run:

    python benchmarks/engine_fuzz.py --rounds 2000 --seed 0
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kairos.config import EngineConfig
from kairos.engine.core import EngineCore
from kairos.sched.cost_model import CostModel
from kairos.sched.output import step_shape
from kairos.sched.policies import POLICIES
from kairos.wire.outputs import EngineRequest, SeqOutput
from kairos.wire.sampling_params import SamplingParams
from kairos.wire.slo import SLO

# seconds per step: 10 ms, and (in the cost model's features) prefill tokens and decode rows
COST = (0.010, 0.1, 0.01, 0.0)
VOCAB = 320
MAX_STEPS = 5_000  # a round that has not ended by then is stuck (livelock)


def make_model(directory: Path):
    """A tiny random Llama saved as a Hugging Face directory; returns the transformers model."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False)
    model = tf.LlamaForCausalLM(cfg)
    with torch.no_grad():  # wide greedy margins: float noise must not flip a token
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 if "embed" in name else 0.08)
    model.eval()
    model.save_pretrained(directory)
    return model


class Reference:
    """Greedy continuations of the transformers model, computed once per prompt."""

    def __init__(self, model, max_new_tokens: int = 12):
        self.model, self.max_new, self.cache = model, max_new_tokens, {}

    def __call__(self, prompt: list[int]) -> list[int]:
        key = tuple(prompt)
        if key not in self.cache:
            ids = torch.tensor([prompt])
            with torch.no_grad():
                out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new,
                                          min_new_tokens=self.max_new, do_sample=False, eos_token_id=None,
                                          pad_token_id=0)
            self.cache[key] = out[0, len(prompt):].tolist()
        return self.cache[key]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Req:
    rid: str
    prompt: list[int]
    params: SamplingParams
    slo: SLO | None
    priority: int
    arrive: int  # step
    abort_at: int | None = None  # step
    stop_after: int | None = None  # tokens of sequence 0 after which a "stop string" ends it
    accepted: bool = False


@dataclass
class Outcome:
    tokens: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    ended: dict[tuple[str, int], str] = field(default_factory=dict)

    def take(self, outputs: list[SeqOutput]) -> None:
        for o in outputs:
            key = (o.request_id, o.index)
            assert key not in self.ended, f"output after the end of {key} ({self.ended.get(key)}): {o}"
            self.tokens.setdefault(key, []).extend(o.new_token_ids)
            if o.finished:
                self.ended[key] = o.finish_reason


def draw_slo(rng: random.Random) -> SLO | None:
    kind = rng.choice(["none", "none", "ttft", "tpot", "deadline", "deadline", "ttft+tpot", "ttft+deadline", "all"])
    if kind == "none":
        return None
    kw = {}
    if "ttft" in kind or kind == "all":
        kw["ttft_ms"] = rng.choice([5, 30, 80, 200, 600, 2000])
    if "tpot" in kind or kind == "all":
        kw["tpot_ms"] = rng.choice([12, 25, 40, 80, 200])
    if "deadline" in kind or kind == "all":
        kw["deadline_ms"] = rng.choice([40, 150, 400, 1000, 4000])
    return SLO(**kw, on_miss=rng.choice(["refuse", "refuse", "refuse", "best_effort"]), name=kind)


def draw_round(rng: random.Random, model_dir: Path) -> tuple[dict, list[Req]]:
    bs = rng.choice([2, 4, 8])
    config = dict(
        model=str(model_dir), device="cpu", dtype="float32", block_size=bs,
        num_blocks=rng.randint(48 // bs + 2, 96 // bs), prefix_cache=rng.random() < 0.7,
        max_num_seqs=rng.randint(1, 6), max_num_batched_tokens=rng.choice([8, 16, 32, 64]),
        scheduling_policy=rng.choice(sorted(POLICIES)), async_scheduling=rng.random() < 0.5,
        yield_slack_s=rng.choice([0.0, 0.05, 1.0]), seed=rng.randrange(1000),
    )
    bases = [[rng.randrange(3, 300) for _ in range(24)] for _ in range(3)]
    reqs = []
    for i in range(rng.randint(6, 14)):
        prompt = bases[rng.randrange(3)][: rng.randint(0, 24)] + [rng.randrange(3, 300) for _ in range(rng.randint(1, 16))]
        greedy = rng.random() < 0.75
        params = SamplingParams(max_tokens=rng.randint(1, 12), n=rng.choice([1, 1, 2, 2, 3]), ignore_eos=True,
                                temperature=0.0 if greedy else 0.9, seed=None if greedy else rng.randrange(100))
        arrive = rng.randint(0, rng.choice([5, 40]))
        req = Req(f"r{i}", prompt, params, draw_slo(rng), rng.randint(0, 3), arrive)
        if rng.random() < 0.15:
            req.abort_at = arrive + rng.randint(0, 25)
        if rng.random() < 0.15:
            req.stop_after = rng.randint(1, params.max_tokens)
        reqs.append(req)
    return config, reqs


def check_kv(engine: EngineCore) -> None:
    """The KV pool's invariants, and the batch's limit."""
    kv, pool, sched = engine.kv, engine.kv.pool, engine.scheduler
    refs = [0] * pool.num_blocks
    for table in kv.block_tables.values():
        for b in table:
            refs[b] += 1
    tree = getattr(kv, "tree", None)
    if tree is not None:
        for node in tree.nodes():
            refs[node.block] += 1
        assert set(kv.locked) <= set(kv.block_tables), "a lock held for a sequence without blocks"
    assert refs[0] == 0, "the null block is referenced"
    assert pool.ref_counts == refs, f"ref counts {pool.ref_counts} != references {refs}"
    free = list(pool.free)
    assert len(free) == len(set(free)), f"duplicates in the free list {free}"
    assert set(free) == {b for b in range(1, pool.num_blocks) if refs[b] == 0}, "free list != unreferenced blocks"
    running = {s.seq_id for s in sched.running}
    assert set(kv.block_tables) <= running, "a sequence that is not running holds blocks"
    for s in sched.running:
        assert len(kv.block_tables.get(s.seq_id, ())) * kv.block_size >= s.num_computed
    seats = len(sched.running) + sum(s.pending_forks for s in sched.running)
    assert seats <= sched.config.max_num_seqs, f"{seats} sequences (with forks to come) > max_num_seqs"


def run_round(seed: int, model_dir: Path, reference: Reference) -> dict[str, int]:
    """One round; raises AssertionError with the seed on a broken invariant. Returns counts."""
    rng = random.Random(seed)
    config, reqs = draw_round(rng, model_dir)
    try:
        return _drive(config, reqs, reference, rng)
    except AssertionError as e:
        raise AssertionError(f"round {seed} ({config}): {e}") from e


def _drive(config: dict, reqs: list[Req], reference: Reference, rng: random.Random) -> dict[str, int]:
    clock = Clock()
    engine = EngineCore(EngineConfig.from_kwargs(**config), clock=clock, timer=clock,
                        cost_model=CostModel(COST, frozen=True))
    cost = engine.cost
    seen = Outcome()
    by_step: dict[int, list[Req]] = {}
    for r in reqs:
        by_step.setdefault(r.arrive, []).append(r)
    aborts = {r.abort_at: [] for r in reqs if r.abort_at is not None}
    for r in reqs:
        if r.abort_at is not None:
            aborts[r.abort_at].append(r)
    last_event = max([*by_step, *aborts])
    stopped: set[tuple[str, int]] = set()
    flight, step = None, 0
    while flight is not None or engine.has_unfinished() or step <= last_event:
        assert step < MAX_STEPS, f"not done after {MAX_STEPS} steps: {engine.scheduler.running} " \
                                 f"running, {engine.scheduler.waiting} waiting"
        for r in by_step.get(step, []):
            try:
                engine.add_request(EngineRequest(r.rid, r.prompt, r.params, slo=r.slo, priority=r.priority))
                r.accepted = True
            except ValueError:  # refused (an SLO out of reach, n past max_num_seqs): its one outcome
                pass
        for r in aborts.get(step, []):
            if r.accepted:
                seen.take(engine.abort(r.rid))
        if flight is None and engine.has_unfinished():
            flight = engine.launch()
        if flight is None:
            clock.t += 0.005  # idle: time still passes (deadlines of parked or waiting work)
            step += 1
            continue
        clock.t += cost.step_time(*step_shape(flight.sched.scheduled)) if flight.sched.scheduled else 0.001
        if rng.random() < 0.05:  # a slow spell of the host: deadlines of several requests pass at once
            clock.t += rng.choice([0.1, 0.5, 2.0])
        outputs, flight = engine.advance(flight)
        engine.take_verdicts()
        seen.take(outputs)
        for r in reqs:  # a stop string, found by the detokenizer after the token came
            key = (r.rid, 0)
            if (r.stop_after is not None and r.accepted and key not in seen.ended and key not in stopped
                    and len(seen.tokens.get(key, ())) >= r.stop_after):
                engine.finish_sequence(r.rid, 0)
                stopped.add(key)
                seen.ended[key] = "stop"
        check_kv(engine)
        step += 1
    return _check_end(engine, reqs, seen, reference)


def _check_end(engine: EngineCore, reqs: list[Req], seen: Outcome, reference: Reference) -> dict[str, int]:
    counts: dict[str, int] = {"requests": len(reqs), "refused": 0, "steps_preempted": engine.scheduler.num_preemptions}
    for r in reqs:
        if not r.accepted:
            counts["refused"] += 1
            assert not any(k[0] == r.rid for k in seen.tokens), f"{r.rid} was refused and still produced output"
            continue
        ref = reference(r.prompt) if r.params.temperature == 0 else None
        for i in range(r.params.n):
            key = (r.rid, i)
            assert key in seen.ended, f"{key} never ended (tokens {seen.tokens.get(key)})"
            why, toks = seen.ended[key], seen.tokens.get(key, [])
            counts[why] = counts.get(why, 0) + 1
            assert len(toks) <= r.params.max_tokens, f"{key}: {len(toks)} tokens > max_tokens"
            if why == "length":
                assert len(toks) == r.params.max_tokens, f"{key} ended by length after {len(toks)} tokens"
            if ref is not None:
                assert toks == ref[: len(toks)], f"{key} ({why}): {toks} != reference {ref[: len(toks)]}"
    assert not engine.has_unfinished() and not engine.scheduler.has_work()
    kv, pool = engine.kv, engine.kv.pool
    tree = getattr(kv, "tree", None)
    if tree is not None:
        assert kv.locked == {}, "locks left behind"
        pool.release(tree.evict(pool.num_blocks))
        assert tree.num_cached_blocks == 0
    assert kv.block_tables == {} and sorted(pool.free) == list(range(1, pool.num_blocks))
    assert all(c == 0 for c in pool.ref_counts)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0, help="first round's seed (round i: seed + i)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ref = Reference(make_model(Path(tmp)))
        totals: dict[str, int] = {}
        t0, failed = time.perf_counter(), []
        for i in range(args.rounds):
            try:
                for k, v in run_round(args.seed + i, Path(tmp), ref).items():
                    totals[k] = totals.get(k, 0) + v
            except AssertionError as e:
                failed.append(args.seed + i)
                print(f"FAILED {e}", file=sys.stderr)
        took = time.perf_counter() - t0
    print(f"{args.rounds} rounds in {took:.0f} s, {len(failed)} failed {failed[:20]}")
    print("  ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
