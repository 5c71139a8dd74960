"""The router's parts on a fake fleet: each policy's exact choices, the forecast from a replica's
pushed state, the block hashes a replica reports and the router matches, and the configs."""

from __future__ import annotations

import argparse
import random

import pytest

from kairos.cli import add_config_args, config_argv
from kairos.cluster.config import FleetConfig, RouterConfig
from kairos.cluster.forecast import forecast, idle_forecast
from kairos.cluster.policies import Ask, Candidate, Decision, Forecast, Tuning, make_policy
from kairos.cluster.replica import APPROX_BLOCK, BYTES_PER_TOKEN, Replica
from kairos.config import SchedulerConfig
from kairos.kv.manager import PrefixCachingKVManager
from kairos.kv.radix import RadixCache
from kairos.sched.cost_model import CostModel
from kairos.wire.blockhash import block_hash, chain
from kairos.wire.costs import StepCost
from kairos.wire.slo import SLO


def cands(*loads, matched=None, forecasts=None):
    matched = matched or [0] * len(loads)
    forecasts = forecasts or [None] * len(loads)
    return [Candidate(i, load, m, f) for i, (load, m, f) in enumerate(zip(loads, matched, forecasts))]


def test_round_robin_turns_through_the_healthy_replicas():
    p = make_policy("round_robin", Tuning())
    orders = [p.choose(Ask(10), cands(0, 0, 0)).order for _ in range(4)]
    assert orders == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]
    # a replica out of the fleet is skipped
    two = [Candidate(0, 0), Candidate(2, 0)]
    assert [p.choose(Ask(10), two).order for _ in range(2)] == [[0, 2], [2, 0]]


def test_least_load_takes_the_lighter_of_two_and_ranks_the_rest_by_load():
    p = make_policy("least_load", Tuning(seed=7))
    fleet = cands(5, 1, 3, 9)
    rng = random.Random(7)
    for _ in range(20):
        two = rng.sample(fleet, 2)
        best = min(two, key=lambda c: (c.load, c.index)).index
        d = p.choose(Ask(10), fleet)
        assert d.order[0] == best and d.reason == "load"
        assert d.order[1:] == [c.index for c in sorted(fleet, key=lambda c: c.load) if c.index != best]
    assert make_policy("least_load", Tuning(seed=1)).choose(Ask(1), cands(3, 0)).order == [1, 0]


def test_cache_aware_weighs_the_cached_share_against_load():
    p = make_policy("cache_aware", Tuning(balance_beta=0.5, balance_abs_threshold=8, balance_rel_threshold=1.5))
    # 0.8 - 0.5 * 4/4 = 0.3 vs 0.0 - 0.5 * 2/4 = -0.25: the prefix wins
    assert p.choose(Ask(100), cands(4, 2, matched=[80, 0])) == Decision([0, 1], "prefix")
    # 0.2 - 0.5 = -0.3 vs 0 - 0.125 = -0.125: load wins over a short match
    assert p.choose(Ask(100), cands(4, 1, matched=[20, 0])) == Decision([1, 0], "load")
    # nothing cached anywhere: the least loaded, ties to the lower index
    assert p.choose(Ask(100), cands(0, 0)) == Decision([0, 1], "load")
    # out of balance (20 - 2 > 8 and 20 > 1.5 x 2): least loaded, whatever is cached
    assert p.choose(Ask(100), cands(20, 2, 5, matched=[100, 0, 0])) == Decision([1, 2, 0], "load")


def test_slo_policy_sends_to_the_most_slack_and_refuses_only_when_none_can_make_it():
    p = make_policy("slo", Tuning())
    slo = SLO(ttft_ms=1000, tpot_ms=100)
    fast, slow, late = Forecast(0.2, 0.05, 1.0), Forecast(0.6, 0.05, 2.0), Forecast(1.5, 0.05, 3.0)
    d = p.choose(Ask(100, slo), cands(2, 0, 0, forecasts=[slow, fast, late]))
    assert (d.order, d.reason, d.refusal, d.forecast) == ([1, 0, 2], "slo", None, fast)
    # slack within 0.15 of the best (slow leaves 0.4 of its TTFT, fast 0.5) is a tie: the less loaded
    assert p.choose(Ask(100, slo), cands(0, 3, 0, forecasts=[slow, fast, late])).order == [0, 1, 2]
    strict = make_policy("slo", Tuning(slo_slack_tolerance=0.0))
    assert strict.choose(Ask(100, slo), cands(0, 3, 0, forecasts=[slow, fast, late])).order == [1, 0, 2]
    # every replica misses as things stand, but one would make it idle: its own admission judges
    worse = Forecast(1.2, 0.2, 4.0)
    busy = [Candidate(0, 2, 0, late, fast), Candidate(1, 2, 0, worse, worse)]
    # (the second misses its TTFT by a fifth but its TPOT by all of it: the first, by half, is the best)
    assert p.choose(Ask(100, slo), busy) == Decision([0, 1], "slo_replica_judges")
    # ... and even idle none would: refused by the router, with the best prediction
    d = p.choose(Ask(100, slo), [Candidate(0, 0, 0, late, late), Candidate(1, 0, 0, worse, worse)])
    assert d.refusal == ("no replica can meet the SLO: predicted TTFT 1500 ms > ttft_ms 1000 (the best replica's "
                         "prediction; an idle one would miss too; set slo.on_miss to \"best_effort\" to be served "
                         "anyway)")
    assert d.forecast == late and d.order == [0, 1]
    # ... or served on the best when the request says best effort
    be = SLO(ttft_ms=1000, on_miss="best_effort")
    assert p.choose(Ask(100, be), cands(0, 0, forecasts=[late, Forecast(1.2, 0.05, 2.0)])) == Decision(
        [1, 0], "slo_best_effort")
    assert idle_forecast({"num_running": 5, "queued_prefill_tokens": 900}, 100, 0, 4) == forecast({}, 100, 0, 4)
    # a replica with nothing known (not Kairos, nothing measured) is tried before a known miss
    assert p.choose(Ask(100, slo), cands(0, 0, forecasts=[late, None])) == Decision([1, 0], "slo_unknown")
    # without an SLO: cache-aware
    assert p.choose(Ask(100), cands(3, 3, matched=[0, 64])).order == [1, 0]


def test_unknown_policy_and_bad_router_settings_are_refused():
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'"):
        make_policy("fastest", Tuning())
    with pytest.raises(ValueError, match="routing_policy must be one of cache_aware, least_load, round_robin, slo"):
        RouterConfig(routing_policy="fastest")
    with pytest.raises(ValueError, match="upstream: 'localhost:8000' is not an http"):
        RouterConfig(upstream=("localhost:8000",))
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        FleetConfig(replicas=0)


def test_core_sets_split_the_cores_and_wrap_when_short():
    assert FleetConfig(replicas=2).core_sets([0, 1, 2, 3]) == [[0, 1], [2, 3]]
    assert FleetConfig(replicas=3, cpus_per_replica=1).core_sets([4, 5]) == [[4], [5], [4]]
    assert FleetConfig(replicas=4).core_sets([0, 1]) == [[0], [1], [0], [1]]


def test_config_argv_rebuilds_the_config():
    cfg = SchedulerConfig(max_num_seqs=8, scheduling_policy="slack")
    parser = argparse.ArgumentParser()
    add_config_args(parser, SchedulerConfig)
    args = parser.parse_args(config_argv(cfg))
    assert SchedulerConfig(**{k: getattr(args, k) for k in vars(args)}) == cfg
    assert config_argv(RouterConfig(upstream=("http://a", "http://b"), balance_beta=0.0)) == [
        "--upstream", "http://a", "--upstream", "http://b", "--balance-beta", "0.0"]


def test_the_router_predicts_with_the_replicas_cost_model():
    cost = CostModel((0.01, 0.05, 0.02, 0.01, 0.004))
    step = StepCost.from_stats(cost.describe())
    for p, d, c in [(0, 1, 100), (300, 4, 2000), (17, 0, 0)]:
        assert step.step_time(p, d, c) == pytest.approx(cost.step_time(p, d, c), rel=1e-12)
        assert step.prefill_time(p, 64, d, c) == pytest.approx(cost.prefill_time(p, 64, d, c), rel=1e-12)
    stats = {**cost.describe(), "max_num_seqs": 8, "max_num_batched_tokens": 64, "num_running": 1, "num_waiting": 0,
             "decode_context_tokens": 100, "queued_prefill_tokens": 0, "step_overhead_s": 0.0}
    f = forecast(stats, prompt_tokens=200, cached_tokens=72, max_tokens=11)
    # 128 uncached tokens in chunks of 64 - 1 (the running decode goes first), next to 1 decode;
    # a token: a decode step of 2 rows over 100 + 200 context tokens
    chunk, ctx = 63, 300
    first = 2 * cost.step_time(chunk, 1, ctx) + cost.step_time(2, 1, ctx)
    tpot = cost.step_time(0, 2, ctx)
    assert (f.ttft_s, f.tpot_s, f.e2e_s) == pytest.approx((first, tpot, first + 10 * tpot))
    # what the router sent and the replica does not show yet counts; calibration scales
    g = forecast({**stats, "slo_ttft_calibration": 2.0}, 200, 72, 11, in_flight=3, pending_prefill=500)
    assert g.ttft_s == pytest.approx(2 * cost.prefill_time(628, 64 - 3, 3, 300))
    # a request with a first-token objective waits only for the prompts of others that have one
    busy = {**stats, "queued_prefill_tokens": 1000, "queued_prefill_tokens_ttft": 100}
    assert forecast(busy, 200, 72, 11).ttft_s == pytest.approx(cost.prefill_time(1128, chunk, 1, ctx))
    assert forecast(busy, 200, 72, 11, first_token_due=True).ttft_s == pytest.approx(
        cost.prefill_time(228, chunk, 1, ctx))


def test_the_radix_cache_reports_what_it_gains_and_loses_as_chained_block_hashes():
    kv = PrefixCachingKVManager(num_blocks=8, block_size=4)
    assert kv.cache_events() == ([], True)  # the first call: a snapshot (empty), and the journal starts
    prompt = list(range(1, 11))  # two full blocks + 2 tokens
    kv.allocate(0, len(prompt))
    kv.cache(0, prompt, len(prompt))
    h = chain(prompt, 4)
    assert h == [block_hash(0, [1, 2, 3, 4]), block_hash(h[0], [5, 6, 7, 8])] and len(set(h)) == 2
    assert kv.cache_events() == (h, False)
    kv.free(0)
    kv._ensure_free(kv.pool.num_usable)  # evicts the two: leaf first
    assert kv.cache_events() == ([-h[1], -h[0]], False)
    assert kv.cache_events() == ([], False)
    t = RadixCache(4)
    t.insert(prompt, [1, 2, 3])
    assert {n.hash for n in t.nodes()} == set(h)  # (no journal kept: None)
    assert t.journal is None


def test_a_replica_matches_prompts_by_what_it_reports_and_what_was_sent():
    prompt = list(range(100))
    rep = Replica(0, "http://r", approx_blocks=64)
    rep.apply({"stats": {"kv_block_size": 16}, "cache": chain(prompt[:48], 16), "cache_snapshot": True})
    rep.kairos = True
    assert rep.healthy and rep.block_size == 16
    assert rep.matched(prompt, {}, exact=True, now=0.0) == 48
    rep.apply({"stats": {"kv_block_size": 16}, "cache": [-chain(prompt[:48], 16)[2]]})
    assert rep.matched(prompt, {}, exact=True, now=0.0) == 32
    # what the router just sent counts until the replica would have reported it
    hashes: dict[int, list[int]] = {}
    rep.remember(prompt, hashes, now=10.0)
    assert rep.matched(prompt, hashes, exact=True, now=11.0) == 96
    assert rep.matched(prompt, hashes, exact=True, now=13.0) == 32
    # a replica that reports nothing: the router's own view, in blocks of APPROX_BLOCK
    other = Replica(1, "http://o", approx_blocks=3)
    other.kairos = False
    other.remember(prompt, {}, now=0.0)  # (6 blocks: only the last 3 are kept)
    assert other.matched(prompt, {}, exact=False, now=99.0) == 0
    other.remember(prompt[:40], {}, now=1.0)
    assert other.matched(prompt, {}, exact=True, now=99.0) == 2 * APPROX_BLOCK  # (token ids: tokens)
    assert other.matched(prompt, {}, exact=False, now=99.0) == 2 * APPROX_BLOCK // BYTES_PER_TOKEN  # (bytes)
    # what the router sent counts as queued there until the replica's stats must show it
    rep.pending = {1: (10.0, 300, False), 2: (10.2, 50, True)}
    assert (rep.pending_prefill(10.4), rep.pending_prefill(10.4, ttft_only=True)) == (350, 50)
    assert rep.pending_prefill(10.6) == 50 and rep.pending == {2: (10.2, 50, True)}
    rep.apply({"stats": {"health": "engine stalled: no word from its process for 6.0 s"}})
    assert not rep.healthy and rep.why_down.startswith("engine stalled")
    rep.apply({"dead": "engine process exited with code -9"})
    assert rep.why_down == "engine dead: engine process exited with code -9"
