"""EngineCore: the step loop (schedule -> execute -> update), synchronous or one step ahead of the
device (async scheduling); outputs are its only contract."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

import torch

from kairos.config import EngineConfig
from kairos.engine.apply import TokenApplier, take_prompt_logprobs
from kairos.engine.flight import StepInFlight
from kairos.engine.intake import check_request
from kairos.engine.live import LiveRequests
from kairos.engine.stopping import StopRules
from kairos.grammar.structured import StructuredOutputs
from kairos.kv.manager import KVCacheManager, PrefixCachingKVManager
from kairos.sched.admission import SLOAdmission
from kairos.sched.cost_model import CostModel, StepIntervals
from kairos.sched.output import step_shape
from kairos.sched.scheduler import Scheduler
from kairos.sched.sequence import SeqStatus, Sequence
from kairos.sched.speculative import NgramProposer
from kairos.wire.outputs import EngineRequest, SeqOutput
from kairos.worker.h2d import d2h, h2d
from kairos.worker.runner import ModelRunner, kv_bytes_per_block, kv_cache_bytes
from kairos.worker.sampler import Sampler, SamplingRow

logger = logging.getLogger(__name__)


class EngineCore:
    """Owns the model runner, KV cache manager, scheduler and sampler of one model replica."""

    def __init__(self, config: EngineConfig, clock: Callable[[], float] = time.monotonic,
                 cost_model: CostModel | None = None, timer: Callable[[], float] = time.perf_counter):
        """``clock`` dates requests and steps (deadlines, step intervals); ``timer`` times the
        device work of a step for the cost model. A simulation passes virtual time for both."""
        from kairos.loader import load_model, resolve_device, resolve_dtype
        from kairos.loader.hf_dir import generation_eos_ids

        model, arch, self.model_path = load_model(config.model)
        self.arch = arch
        self.device = resolve_device(config.model)
        self.dtype = resolve_dtype(config.model, self.device)
        sched = config.scheduler.for_device(self.device.type)
        if config.speculative.speculative_tokens:  # (EngineConfig refused async scheduling asked for)
            sched = replace(sched, async_scheduling=False)
        config = replace(config, scheduler=sched)
        self.config = config
        cc = config.cache
        num_blocks = cc.num_blocks or max(2, kv_cache_bytes(cc, self.device) // kv_bytes_per_block(arch, cc.block_size, self.dtype))
        self.kv = (PrefixCachingKVManager if cc.prefix_cache else KVCacheManager)(num_blocks, cc.block_size)
        self.runner = ModelRunner(model, arch, num_blocks, cc.block_size, self.device, self.dtype,
                                  cpu_kernels=config.model.cpu_kernels)
        self.clock, self.timer = clock, timer
        self.cost = cost_model or CostModel()
        self.intervals = StepIntervals()
        self._last_step_end: float | None = None  # None: the engine idled since its last step
        self._last_done = 0.0  # timer reading when the last finished step's device work was seen done
        self.sampler = Sampler(self.device, config.model.seed)
        self.eos_token_ids = frozenset(arch.eos_token_ids) | generation_eos_ids(self.model_path)
        self.structured = StructuredOutputs(self._load_tokenizer, arch.vocab_size, list(self.eos_token_ids))
        limits = [arch.max_position_embeddings, self.kv.pool.num_usable * cc.block_size]
        if config.model.max_model_len:
            limits.append(config.model.max_model_len)
        if arch.sliding_window:  # full attention is exact only inside the window
            limits.append(arch.sliding_window)
        self.max_model_len = min(limits)
        self.stops = StopRules(self.eos_token_ids, arch.vocab_size, self.max_model_len)
        spec = config.speculative
        self.proposer = NgramProposer(spec, self.max_model_len) if spec.speculative_tokens else None
        self.scheduler = Scheduler(config.scheduler, self.kv, self.cost, clock, self.proposer, self.intervals)
        self.slo_admission = SLOAdmission(self.scheduler, self.cost, self.intervals, clock, config.scheduler.slo_confidence)
        self.live = LiveRequests(self.scheduler, self.kv, self.slo_admission, self.structured)
        self.apply = TokenApplier(self.stops, self.scheduler, self.slo_admission, self.proposer, self.live.finish)
        if config.model.cuda_graphs and self.device.type == "cuda" and self.runner.decode_kernel:
            from kairos.worker.capture_record import start_decode_graphs

            start_decode_graphs(self.runner, config.scheduler.max_num_seqs, self.max_model_len, self.model_path,
                                config.model.load_format)
        self._in_flight: deque[StepInFlight] = deque()  # launched, not finished yet (oldest first)
        logger.info("engine: %s on %s/%s, %d KV blocks of %d tokens, max_model_len %d",
                    arch.architecture, self.device, str(self.dtype).removeprefix("torch."),
                    num_blocks, cc.block_size, self.max_model_len)

    # -- requests in -------------------------------------------------------------------------
    def add_request(self, req: EngineRequest) -> None:
        """Queue a request; raises ``ValueError`` (and changes nothing) when it cannot be served."""
        p, prompt = req.params, req.prompt_token_ids
        if req.request_id in self.requests:
            raise ValueError(f"request_id {req.request_id!r} is already in use")
        check_request(req, self.arch.vocab_size, self.max_model_len, self.kv, self.config.scheduler.max_num_seqs)
        checked = self.structured.check(p.structured) if p.structured is not None else None
        arrival = self.clock() if req.arrival_time is None else req.arrival_time
        seq = Sequence(self.live.next_id(), req.request_id, 0, prompt, p, arrival, pending_forks=p.n - 1,
                       slo=req.slo, priority=req.priority)
        if req.slo is not None:
            self.slo_admission.admit(seq)
        # (compiled for the tokenizer on its own thread: meanwhile the request is parked)
        grammar = self.structured.start(p.structured, checked) if checked is not None else None
        if grammar is not None and grammar.done():  # (compiled already)
            try:
                seq.matcher = self.structured.take(p.structured, grammar)
            except Exception as e:  # noqa: BLE001 - a compile that failed for the tokenizer: refused
                raise ValueError(str(e)) from None
            grammar = None
        if not self.live:  # work after idling (however the last requests ended): no interval spans the gap
            self._last_step_end = None
        self.live.add(seq, grammar)

    @property
    def requests(self) -> dict[str, list[Sequence | None]]:
        """The live requests' sequences by request id (None: a sibling not forked yet)."""
        return self.live.seqs

    def is_waiting_for_grammar(self, request_id: str) -> bool:
        return request_id in self.live.parked

    def take_verdicts(self) -> list[tuple[str, str | None]]:
        """Requests that waited for their grammar since the last call: (id, None) for those now
        scheduled, (id, the error) for those that ended in "error" (their grammar failed). A
        driver that does not judge requests (``LLM``) still takes them, or they pile up."""
        return self.live.take_verdicts()

    def admission(self, request_id: str) -> tuple[float, float, float] | None:
        """What admission control predicted for an admitted SLO request: seconds from arrival to
        its first token and to its last (both scaled by the calibration), and per output token."""
        seqs = self.requests.get(request_id)
        return seqs[0].promised if seqs and seqs[0] is not None else None

    def abort(self, request_id: str) -> list[SeqOutput]:
        """End every unfinished sequence of a request (client gone, cancelled); frees its blocks."""
        return self.live.abort(request_id)

    def finish_sequence(self, request_id: str, index: int) -> None:
        """End one sequence early (a stop string was found by the detokenizer)."""
        self.live.finish_sequence(request_id, index)

    def has_unfinished(self) -> bool:
        return bool(self.live)

    def only_compiling(self) -> bool:
        """Whether every unfinished request waits for its grammar (a step would do nothing)."""
        return self.live.only_compiling()

    def can_launch_ahead(self) -> bool:
        """Whether :meth:`launch` may queue the next step before the one in flight finishes
        (async scheduling): it is on, and one step is in flight, already sampled."""
        return (self.config.scheduler.async_scheduling and len(self._in_flight) == 1 and bool(self.live)
                and self._in_flight[0].logits is None
                and not self.only_compiling())  # (nothing to launch: a loop would spin while a grammar compiles)

    # -- the step ----------------------------------------------------------------------------
    def step(self) -> list[SeqOutput]:
        """One schedule -> execute -> update round; returns its outputs."""
        return self.finish(self.launch())

    def launch(self) -> StepInFlight:
        """Schedule a step and queue its forward pass and sampling on the device, without waiting
        for them (on a GPU the host is free until :meth:`finish`). Each sampled token holds its
        place as a ``PLACEHOLDER`` until then. While a step is in flight the calls allowed are
        :meth:`finish` (steps finish in launch order), :meth:`finish_sequence`, :meth:`abort`, and
        :meth:`launch` when :meth:`can_launch_ahead`: that step reads the tokens of the one in
        flight on the device. A token of a sequence ended meanwhile is dropped."""
        if self._in_flight and not self.can_launch_ahead():
            raise RuntimeError("a step is in flight: finish it first (or enable async scheduling)")
        prev = self._in_flight[-1] if self._in_flight else None
        unparked = self.live.unpark(self.clock()) if self.live.parked else []
        flight = StepInFlight(self.clock(), self.scheduler.schedule())
        self._in_flight.append(flight)
        sched = flight.sched
        flight.outputs = unparked + self.live.expire(sched.expired, self.clock())
        if not sched.scheduled:
            return flight
        flight.t0 = self.timer()
        if prev is not None and prev.sample is not None:  # inputs that are its placeholders come from its tokens
            logits, flight.prompt = self.runner.execute(sched.scheduled, prev.sample.token_ids, prev.row_of)  # [S, V]
        else:
            logits, flight.prompt = self.runner.execute(sched.scheduled)  # [S, V], S = entries that sample
        for seq, _, hi in flight.prompt.spans if flight.prompt is not None else ():
            seq.num_prompt_logprobs = hi  # (found: a recompute after a preemption does not find them again)
        copies: list[tuple[int, int]] = []
        samples = [s.samples for s in sched.scheduled]  # read before num_computed moves
        self.scheduler.update(sched)
        logit_rows = flight.lay_out_rows(samples, lambda seq, held: self.live.fork(seq, copies, held), self.kv.give_back)
        if copies:
            self.runner.copy_blocks(copies)
        if flight.seqs:
            if len(logit_rows) != logits.shape[0]:
                logits = logits.index_select(0, h2d(logit_rows, logits.device, torch.long))
            if prev is not None and any(q.num_pending and q.params.needs_last_token for q in flight.seqs):
                # a row needs the token still in flight on the host (penalties count it, a grammar
                # advances by it): the forward pass is queued now, its sampling once ``prev`` is
                # applied (:meth:`finish`), so the device runs the forward while the host waits
                flight.logits = logits
            else:
                self._sample(flight, logits)
        else:  # (a prompt chunk that does not reach the end: finish still waits for it, for the cost model)
            flight.done = d2h([logits[:0]])
        return flight

    def _sample(self, flight: StepInFlight, logits: torch.Tensor) -> None:
        # (a sampling put off by launch: its sequences ended meanwhile sample unconstrained, and
        # their tokens are dropped by finish)
        rows: list[SamplingRow] = []
        for j, q in enumerate(flight.seqs):  # (a drafted sequence's rows are one row, repeated)
            rows.append(rows[-1] if j and flight.seqs[j - 1] is q else self._sampling_row(q))
        flight.rows = rows
        flight.sample = self.sampler.sample(logits, flight.rows)
        flight.logits = None
        flight.hold_places()

    def advance(self, flight: StepInFlight) -> tuple[list[SeqOutput], StepInFlight | None]:
        """Finish ``flight``, launching the next step first when it may go ahead (async
        scheduling). Returns the outputs and the step now in flight, if any."""
        ahead = self.launch() if self.can_launch_ahead() else None
        return self.finish(flight), ahead

    def discard_in_flight(self) -> list[SeqOutput]:
        """Forget launched steps without applying them (after an error): the requests they ran
        are aborted (their sequences' tokens and computed counts are past what is known)."""
        rids = {s.seq.request_id for f in self._in_flight for s in f.sched.scheduled}
        for s in (s for f in self._in_flight for s in f.sched.scheduled if s.fork_blocks):
            self.kv.give_back(s.fork_blocks)  # (a launch that failed before its forks)
            s.fork_blocks = []
        self._in_flight.clear()
        self._last_step_end = None  # (no interval spans the error's handling)
        return [o for rid in sorted(rids) for o in self.abort(rid)]

    def finish(self, flight: StepInFlight) -> list[SeqOutput]:
        """Wait for a launched step and apply it: new tokens, stops, the step's outputs."""
        if not self._in_flight or self._in_flight[0] is not flight:
            raise RuntimeError("steps finish in the order they were launched")
        self._in_flight.popleft()
        outputs = flight.outputs
        if flight.t0 is None:  # nothing was scheduled (idle, however briefly: no interval spans it)
            self._last_step_end = None
            return outputs
        sampled = self.sampler.to_host(flight.sample, flight.rows) if flight.sample is not None else None
        if flight.done is not None:
            flight.done.wait()
        if flight.prompt is not None:  # (before the tokens: the first one carries them)
            take_prompt_logprobs(flight.prompt)
        # the step's device work is done (to_host waited for it); queued while the step before it
        # ran (async scheduling), its own work began when that one's ended
        done = self.timer()
        shape = step_shape(flight.sched.scheduled)  # (prefill tokens, decode rows, their context)
        self.cost.observe(*shape, done - max(flight.t0, self._last_done))
        self._last_done = done
        if sampled is not None:
            now = self.clock()
            if flight.drafts:
                outputs += self.apply.drafted(flight.seqs, flight.drafts, sampled, now)
            else:  # (the common step: a token a row)
                for seq, tok, lp in zip(flight.seqs, sampled.token_ids, sampled.logprobs):
                    if seq.status is not SeqStatus.FINISHED:  # (ended by a stop string or abort meanwhile)
                        outputs.append(self.apply.token(seq, tok, lp, now))
        if self._in_flight and self._in_flight[0].logits is not None:  # (launched ahead: its turn to sample)
            self._sample(self._in_flight[0], self._in_flight[0].logits)
        end = self.clock()
        last = self._last_step_end
        seconds = end - (flight.start if last is None else last)
        self.intervals.observe(end, seconds, self.cost.step_time(0, *shape[1:]), prefill=shape[0] > 0)
        self._last_step_end = end if self.has_unfinished() else None
        return outputs

    # -- helpers -----------------------------------------------------------------------------
    def _sampling_row(self, seq: Sequence) -> SamplingRow:
        if seq.seed is not None and seq.generator is None:
            seq.generator = self.sampler.new_generator(seq.seed)
        p, suppress = seq.params, self.stops.held_back(seq)
        matcher = seq.matcher if seq.status is not SeqStatus.FINISHED else None  # (stopped, or in error)
        if p.has_penalties:
            prompt = seq.prompt_set() if p.repetition_penalty != 1.0 else ()
            return SamplingRow(p, seq.generator, prompt, seq.output_token_ids, suppress, matcher)
        return SamplingRow(p, seq.generator, [], [], suppress, matcher)

    def _load_tokenizer(self):  # -> a transformers tokenizer, or None
        from kairos.loader import load_tokenizer

        return load_tokenizer(self.model_path)

    def stats(self) -> dict[str, int]:
        pool = self.kv.pool
        return {
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "num_compiling": len(self.live.parked),  # (waiting for their grammar)
            "kv_blocks_total": pool.num_usable,
            "kv_blocks_free": pool.num_free,
            "kv_blocks_used": pool.num_usable - pool.num_free,
            # blocks that live sequences reference (the rest of "used" is prefix cache only)
            "kv_blocks_active": len({b for t in self.kv.block_tables.values() for b in t}),
            **self.kv.stats(),
            **self.cost.describe(),
            **self.slo_admission.stats(),
            "step_interval_s": self.intervals.mean(self.clock()),
            "step_overhead_s": self.intervals.overhead(self.clock()),
            "step_prefill_load": self.intervals.prefill_load(self.clock()),
            "requests_expired": self.live.expired,
            # what a router predicts this replica's answers from (with the cost model above)
            "kv_block_size": self.kv.block_size,
            "max_num_seqs": self.scheduler.config.max_num_seqs,
            "max_num_batched_tokens": self.scheduler.config.max_num_batched_tokens,
            "queued_prefill_tokens": sum(s.remaining_prefill for s in self.scheduler.waiting + self.scheduler.running
                                         if s.num_tokens - s.num_computed > 1),
            # (of which those of requests with a first-token objective still ahead: what the slack
            # and edf policies put before a new request that has one, and batch work after it)
            "queued_prefill_tokens_ttft": sum(s.remaining_prefill for s in self.scheduler.waiting + self.scheduler.running
                                              if s.num_tokens - s.num_computed > 1 and s.slo is not None
                                              and s.slo.ttft_ms is not None and s.first_token_time is None),
            "decode_context_tokens": sum(s.num_tokens for s in self.scheduler.running
                                         if s.num_tokens - s.num_computed <= 1),
            "num_preemptions": self.scheduler.num_preemptions,
            **({"spec_draft_tokens": self.proposer.drafted, "spec_accepted_tokens": self.proposer.accepted}
               if self.proposer is not None else {}),
        }

