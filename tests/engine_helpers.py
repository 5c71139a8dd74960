"""Drive an EngineCore step by step and collect what it produced."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from kairos.config import EngineConfig
from kairos.engine.core import EngineCore
from kairos.wire.outputs import EngineRequest
from kairos.wire.sampling_params import SamplingParams

GREEDY = dict(temperature=0.0, ignore_eos=True)


def make_engine(path, **kwargs) -> EngineCore:
    # on the CPU unless a test asks for the GPU: "auto" would put the CPU tests' float32
    # expectations on a GPU in bfloat16, with 90% of its memory each
    kwargs.setdefault("device", "cpu")
    return EngineCore(EngineConfig.from_kwargs(model=str(path), **kwargs))


def run(engine: EngineCore, arrivals: dict[int, list[tuple[str, list[int], SamplingParams]]], max_steps: int = 10_000):
    """Step the engine, adding ``arrivals[step]`` before that step; returns {(rid, index): (tokens, finish_reason)}."""
    done: dict[tuple[str, int], tuple[list[int], str]] = {}
    tokens: dict[tuple[str, int], list[int]] = {}
    step = 0
    while step < max_steps and (engine.has_unfinished() or any(k >= step for k in arrivals)):
        for rid, prompt, params in arrivals.get(step, []):
            engine.add_request(EngineRequest(rid, prompt, params))
        if engine.only_compiling():  # (a grammar compiles on its own thread: not a step's work)
            time.sleep(0.001)
        for out in engine.step():
            key = (out.request_id, out.index)
            tokens.setdefault(key, []).extend(out.new_token_ids)
            if out.finished:
                done[key] = (tokens[key], out.finish_reason)
        step += 1
    assert not engine.has_unfinished(), "engine did not finish in max_steps"
    return done


def prompts_of(lengths: list[int], vocab: int = 300) -> list[list[int]]:
    return [[(i * 7 + j * 13 + 5) % vocab + 3 for j in range(n)] for i, n in enumerate(lengths)]


def assert_pool_whole(engine: EngineCore) -> None:
    """Every block is free, or held only by the prefix tree and unlocked (so evicting the tree frees all)."""
    pool = engine.kv.pool
    tree = getattr(engine.kv, "tree", None)
    if tree is not None:
        assert engine.kv.locked == {}
        pool.release(tree.evict(pool.num_blocks))
        assert tree.num_cached_blocks == 0
    assert pool.num_free == pool.num_usable
    assert sorted(pool.free) == list(range(1, pool.num_blocks))
    assert all(c == 0 for c in pool.ref_counts)
    assert engine.kv.block_tables == {}


def reference_decode_attention(q, k_cache, v_cache, tables, lens, scale) -> torch.Tensor:
    """One query token per sequence against its context in a paged cache, by SDPA over the
    context's slots one sequence at a time, in float32: ``q [B, Hq, D]``, caches
    ``[NB, bs, Hkv, D]``, ``tables [B, n]``, ``lens [B]`` -> ``[B, Hq, D]``."""
    out = []
    bs, hkv, d = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    for b in range(q.shape[0]):
        n = int(lens[b])
        slots = [int(tables[b, t // bs]) * bs + t % bs for t in range(n)]
        k = k_cache.reshape(-1, hkv, d)[slots].transpose(0, 1).float()  # [Hkv, n, D]
        v = v_cache.reshape(-1, hkv, d)[slots].transpose(0, 1).float()
        o = F.scaled_dot_product_attention(q[b].unsqueeze(1).float(), k, v, scale=scale, enable_gqa=True)  # [Hq, 1, D]
        out.append(o.squeeze(1))
    return torch.stack(out)
