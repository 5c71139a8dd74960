"""What the engine checks of a request before it queues it: each failure is a ``ValueError``
(the API's 400), raised before anything changes."""

from __future__ import annotations

from kairos.engine.kv_cache import KVCacheManager
from kairos.engine.outputs import EngineRequest


def check_request(req: EngineRequest, vocab_size: int, max_model_len: int, kv: KVCacheManager) -> None:
    """Raises ``ValueError`` when ``req`` cannot be served by a model of ``vocab_size`` tokens and
    ``max_model_len`` positions, with the blocks of ``kv``."""
    p, prompt = req.params, req.prompt_token_ids
    if not prompt:
        raise ValueError("prompt must not be empty")
    if min(prompt) < 0 or max(prompt) >= vocab_size:
        raise ValueError(f"prompt token ids must be in [0, {vocab_size})")
    if p.logit_bias and p.logit_bias[-1][0] >= vocab_size:
        raise ValueError(f"logit_bias keys must be token ids in [0, {vocab_size})")
    # (the last token sampled is never fed, so one alone needs no room: a prompt of max_model_len
    # may still be scored, with prompt_logprobs, by sampling one token)
    if len(prompt) + p.max_tokens > max_model_len + (p.max_tokens == 1):
        raise ValueError(
            f"this model's maximum context length is {max_model_len} tokens, but "
            f"{len(prompt) + p.max_tokens} were requested ({len(prompt)} in the prompt, "
            f"{p.max_tokens} in max_tokens): shorten the prompt or lower max_tokens"
        )
    if kv.blocks_needed(-1, len(prompt)) + p.n - 1 > kv.pool.num_usable:
        raise ValueError(f"n={p.n} with a {len(prompt)}-token prompt does not fit in the KV cache")
