"""A sequence: the scheduling unit (one of a request's ``n`` completions)."""

from __future__ import annotations

import enum
import time

import numpy as np
import torch

from kairos.wire.sampling_params import SamplingParams
from kairos.wire.slo import SLO

# A token sampled by a step still on the device (async scheduling): it holds the token's place in
# ``token_ids`` until the step finishes; the runner reads its value from the device meanwhile.
PLACEHOLDER = -1


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """Token ids (prompt then output) and how many of them have KV in the cache.

    ``token_ids[num_computed:]`` still need a forward pass; when that pass reaches the
    end, the step samples the next token. The last ``num_pending`` ids are ``PLACEHOLDER``s:
    tokens of launched steps not finished yet. Block tables live in the KV cache manager.
    """

    def __init__(self, seq_id: int, request_id: str, index: int, prompt_token_ids: list[int],
                 params: SamplingParams, arrival_time: float | None = None, pending_forks: int = 0,
                 slo: SLO | None = None, priority: int = 0):
        self.seq_id = seq_id
        self.request_id = request_id
        self.index = index
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed = 0
        self.num_pending = 0  # trailing PLACEHOLDERs
        self.params = params
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.status = SeqStatus.WAITING
        self.pending_forks = pending_forks  # siblings to fork from this one when its prompt is done
        self.num_preemptions = 0
        self.waited_steps = 0  # scheduling rounds spent waiting, or held back mid-prompt (for starvation guards)
        self.missed: tuple[str, ...] = ()  # the objectives ("ttft", "deadline") it expired for
        self.slo = slo
        self.priority = priority
        self.best_effort = slo is None  # also set when an infeasible SLO falls back (on_miss=best_effort)
        self.first_token_time: float | None = None
        self.predicted: tuple[float, float] | None = None  # (first, last token) s after arrival, at admission
        # what admission judged the request by (``predicted`` scaled by the calibration), and the
        # time per token: (first token, per token, last token) s
        self.promised: tuple[float, float, float] | None = None
        self.seed = None if params.seed is None else params.seed + index  # sibling i draws from seed + i
        self.generator: torch.Generator | None = None  # on the sampling device, made at the first draw
        self.matcher = None  # structured output: llguidance's parse state of the output so far
        self._prompt_set: np.ndarray | None = None  # the prompt's distinct ids (the repetition penalty's)
        # prompt_logprobs: those found so far (prompt tokens 1..), until the first output token takes them
        self.prompt_logprobs: list | None = [] if params.prompt_logprobs is not None else None
        self.num_prompt_logprobs = 0  # prompt positions whose logprobs were computed (a recompute skips them)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_known(self) -> int:
        """Tokens whose ids are known (all but the trailing placeholders)."""
        return len(self.token_ids) - self.num_pending

    def drop_placeholders(self) -> None:
        """Keep only known tokens (an ended sequence: the tokens of its steps in flight are dropped)."""
        if self.num_pending:
            del self.token_ids[self.num_known :]
            self.num_pending = 0

    @property
    def all_sampled(self) -> bool:
        """Whether its ``max_tokens`` tokens have all been sampled (the last perhaps still on the device)."""
        return len(self.token_ids) - self.num_prompt_tokens >= self.params.max_tokens

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Whether prompt positions are left whose logprobs it still needs (position p: token p + 1)."""
        return self.prompt_logprobs is not None and self.num_prompt_logprobs < self.num_prompt_tokens - 1

    def prompt_set(self) -> np.ndarray:
        """The prompt's distinct token ids, int64, made once (the sampler's repetition penalty reads
        them every step)."""
        if self._prompt_set is None:
            self._prompt_set = np.unique(np.asarray(self.token_ids[: self.num_prompt_tokens], dtype=np.int64))
        return self._prompt_set

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def ttft_deadline(self) -> float | None:
        if self.slo is None or self.slo.ttft_ms is None or self.first_token_time is not None:
            return None
        return self.arrival_time + self.slo.ttft_ms / 1000

    @property
    def e2e_deadline(self) -> float | None:
        if self.slo is None or self.slo.deadline_ms is None:
            return None
        return self.arrival_time + self.slo.deadline_ms / 1000

    @property
    def tpot_s(self) -> float | None:
        """The TPOT promise in seconds, if this sequence is served under one (not best-effort)."""
        if self.best_effort or self.slo is None or self.slo.tpot_ms is None:
            return None
        return self.slo.tpot_ms / 1000

    @property
    def tpot_deadline(self) -> float | None:
        """Once the first token is out, a TPOT objective is a deadline for the last one: the mean
        time per output token stays within ``tpot_ms`` if all ``max_tokens`` are out by then."""
        if self.slo is None or self.slo.tpot_ms is None or self.first_token_time is None:
            return None
        return self.first_token_time + self.slo.tpot_ms / 1000 * max(1, self.params.max_tokens - 1)

    @property
    def remaining_prefill(self) -> int:
        return max(0, self.num_tokens - self.num_computed)

    @property
    def remaining_decode(self) -> int:
        return max(0, self.params.max_tokens - self.num_output_tokens)

    def fork(self, seq_id: int, index: int) -> Sequence:
        """A sibling sharing everything computed so far (its KV is shared by the cache manager)."""
        child = Sequence(seq_id, self.request_id, index, self.token_ids[: self.num_prompt_tokens],
                         self.params, self.arrival_time, slo=self.slo, priority=self.priority)
        child.best_effort = self.best_effort
        child.token_ids = list(self.token_ids)
        child.num_computed = self.num_computed
        child.status = self.status
        child.matcher = self.matcher.deep_copy() if self.matcher is not None else None
        child._prompt_set = self._prompt_set
        child.prompt_logprobs = None  # (the request's are the parent's)
        return child

    def __repr__(self) -> str:
        return (f"Sequence({self.request_id}/{self.index}, tokens={self.num_tokens}, "
                f"computed={self.num_computed}, {self.status.value})")
