"""Speculative decoding by n-gram lookup (vLLM's "ngram" method): drafts from a sequence's own
history, verified in one forward pass.

A sequence whose last n tokens (n from ``prompt_lookup_max`` down to ``prompt_lookup_min``) occur
earlier in its prompt or output proposes the tokens that followed their latest earlier occurrence.
The step computes its last token and the draft together (a chunk of 1 + k tokens), the sampler
samples every position from the model's own distribution there, and the draft is kept up to the
first position whose sample differs from it, that sample being the step's last token (all kept:
the sample after the last draft token). With a draft of single tokens this is exact speculative
sampling: a draft token x is kept with probability p(x), and a sample from p that is not x is a
draw from p with x taken out, the residual distribution. Greedy outputs are unchanged; seeded ones
are reproducible but not those of plain decoding (the draws are spent differently).
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from kairos.config import SpeculativeConfig
from kairos.sched.sequence import Sequence


class NgramIndex:
    """The latest start of every n-gram (``n_min`` to ``n_max`` tokens) of one sequence's tokens
    that ends before its last token, brought up to date as tokens are appended: a lookup costs a
    few dict reads whatever the context (a scan of the whole history per step cost 0.6 ms at 4k
    tokens, 2 ms at 16k), for ~0.4 KiB of host memory a token (``benchmarks/ngram_lookup.py``).
    A long prompt is indexed ``catch_up`` positions a lookup (4-8 ms at 4096 here), drafting nothing
    until done, so no step stalls on it (nor on the n siblings of a forked request). The tokens
    only grow: a draft's refused tail never enters them."""

    def __init__(self, n_min: int, n_max: int, catch_up: int = 4096):
        self.ns = range(n_min, n_max + 1)
        self.catch_up = catch_up
        self.starts: dict[tuple[int, ...], int] = {}  # (an n-gram's tokens, n of them: one dict serves every n)
        self.indexed = 0  # grams ending before this position are in ``starts``

    def draft(self, tokens: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the longest suffix of
        ``tokens`` of ``n_min`` to ``n_max`` tokens; [] when none occurs (or still indexing)."""
        total = len(tokens)
        upto = min(total - 1, self.indexed + self.catch_up)
        for end in range(self.indexed, upto):  # (later starts overwrite: the latest is kept)
            for n in self.ns:
                if end + 1 >= n:
                    self.starts[tuple(tokens[end + 1 - n : end + 1])] = end + 1 - n
        self.indexed = max(self.indexed, upto)
        if self.indexed < total - 1:
            return []
        for n in reversed(self.ns):
            start = self.starts.get(tuple(tokens[total - n :])) if n < total else None
            if start is not None:
                return tokens[start + n : start + n + k]
        return []


class NgramProposer:
    """Drafts for the sequences a step decodes (:meth:`propose`); counts what was drafted and kept."""

    def __init__(self, config: SpeculativeConfig, max_model_len: int):
        self.config = config
        self.max_model_len = max_model_len
        self.drafted = 0  # draft tokens verified
        self.accepted = 0  # of them, kept
        # (an entry goes with its sequence: nothing to forget when one ends)
        self._indexes: WeakKeyDictionary[Sequence, NgramIndex] = WeakKeyDictionary()

    def propose(self, seq: Sequence, budget: int) -> list[int]:
        """A draft for ``seq``'s next step, within ``budget`` (the step's tokens left less one for
        each decode still to place, so drafts never crowd out another sequence's token), its
        ``max_tokens`` and the context; [] for a sequence whose sampling needs each token on the
        host first (penalties, a grammar) or whose ``min_tokens`` still holds tokens back."""
        p = seq.params
        if p.needs_last_token or seq.num_pending or seq.pending_forks or seq.num_output_tokens < p.min_tokens:
            return []  # (pending forks: its siblings fork at its first sampled token, from a plain step)
        # tokens out after the step <= max_tokens; the last draft token's position < max_model_len
        k = min(self.config.speculative_tokens, budget - 1, p.max_tokens - seq.num_output_tokens - 1,
                self.max_model_len - seq.num_tokens)
        if k < 1:
            return []
        index = self._indexes.get(seq)
        if index is None:
            index = self._indexes[seq] = NgramIndex(self.config.prompt_lookup_min, self.config.prompt_lookup_max)
        return index.draft(seq.token_ids, k)

    def verified(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted
