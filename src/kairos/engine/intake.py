"""What the engine checks of a request before it queues it: each failure is a ``ValueError``
(the API's 400), raised before anything changes."""

from __future__ import annotations

from kairos.kv.manager import KVCacheManager
from kairos.wire.checks import check_context_length, check_logit_bias, check_prompt_ids
from kairos.wire.outputs import EngineRequest


def check_request(req: EngineRequest, vocab_size: int, max_model_len: int, kv: KVCacheManager,
                  max_num_seqs: int) -> None:
    """Raises ``ValueError`` when ``req`` cannot be served by a model of ``vocab_size`` tokens and
    ``max_model_len`` positions, with the blocks of ``kv`` and steps of ``max_num_seqs`` sequences."""
    p, prompt = req.params, req.prompt_token_ids
    check_prompt_ids(prompt, vocab_size)
    check_logit_bias(p.logit_bias, vocab_size)
    check_context_length(len(prompt), p.max_tokens, max_model_len)
    if kv.blocks_needed(-1, len(prompt)) + p.n - 1 > kv.pool.num_usable:
        raise ValueError(f"n={p.n} with a {len(prompt)}-token prompt does not fit in the KV cache")
    if p.n > max_num_seqs:
        raise ValueError(f"n={p.n} is more than the {max_num_seqs} sequences a step holds (max_num_seqs)")
