"""The rules a request meets before it is served, each in one place: the API process checks them
before a request reaches the engine, the engine (``LLM`` and any other caller) as it takes one.
Each failure is a ``ValueError`` whose message is the client's."""

from __future__ import annotations


def check_prompt_ids(ids: list[int], vocab_size: int) -> None:
    if not ids:
        raise ValueError("prompt must not be empty")
    if min(ids) < 0 or max(ids) >= vocab_size:
        raise ValueError(f"prompt token ids must be in [0, {vocab_size})")


def check_logit_bias(logit_bias, vocab_size: int) -> None:
    """``logit_bias``: ``SamplingParams``'s (sorted by token id, ids non-negative)."""
    if logit_bias and logit_bias[-1][0] >= vocab_size:
        raise ValueError(f"logit_bias keys must be token ids in [0, {vocab_size})")


def check_context_length(prompt_len: int, max_tokens: int, max_model_len: int) -> None:
    """A prompt of ``prompt_len`` tokens and ``max_tokens`` to sample fit in ``max_model_len``
    positions. The last token sampled is never fed, so one alone needs no room: a prompt of
    ``max_model_len`` may still be scored (``prompt_logprobs``; ``echo`` with ``max_tokens`` 0,
    which samples one token and shows none) by sampling one token."""
    if prompt_len + max_tokens > max_model_len + (max_tokens == 1):
        raise ValueError(f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                         f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} in the "
                         f"completion). Please reduce the length.")
