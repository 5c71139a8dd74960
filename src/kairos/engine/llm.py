"""Offline batch generation: ``LLM(model).generate(prompts, params)`` and ``.chat(messages, params)``."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence as Seq
from typing import Any

from kairos.config import EngineConfig
from kairos.detok.output_processor import OutputProcessor, RequestOutput
from kairos.engine.core import EngineCore
from kairos.heap import freeze_startup_heap
from kairos.wire.outputs import EngineRequest
from kairos.wire.sampling_params import SamplingParams
from kairos.wire.slo import SLO

Prompt = str | list[int]
Message = dict[str, Any]


class LLM:
    """An engine in this process. Keyword arguments are the fields of the engine's config dataclasses.

    Building one freezes the process's heap as it stands (``engine.heap``: no collector pauses
    over start-up objects); objects alive then are no longer collected when they later form
    unreachable cycles (reference counting still frees the rest). ``gc.unfreeze()`` undoes it."""

    def __init__(self, model: str = "default", **engine_kwargs: Any):
        self._init(EngineConfig.from_kwargs(model=model, **engine_kwargs))

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLM:
        llm = cls.__new__(cls)
        llm._init(config)
        return llm

    def _init(self, config: EngineConfig) -> None:
        from kairos.loader import load_tokenizer

        self.config = config
        self.engine = EngineCore(config)
        self.tokenizer = load_tokenizer(self.engine.model_path)
        self.processor = OutputProcessor(self.tokenizer)
        self._ids = itertools.count()
        freeze_startup_heap()

    def generate(self, prompts: Prompt | Seq[Prompt],
                 sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 slo: SLO | None = None, priority: int = 0) -> list[RequestOutput]:
        """Complete each prompt (text, or a list of token ids); outputs in the prompts' order.

        ``slo``/``priority`` apply to every prompt: an infeasible SLO raises ``kairos.SLOInfeasible``
        (unless ``slo.on_miss == "best_effort"``), and a request that can no longer meet it
        ends with ``finish_reason == "expired"``."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        return self._run([(p if isinstance(p, str) else None, self._encode(p)) for p in prompts], sampling_params,
                         slo, priority)

    def chat(self, messages: list[Message] | list[list[Message]],
             sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
             add_generation_prompt: bool = True, slo: SLO | None = None, priority: int = 0) -> list[RequestOutput]:
        """Apply the model's chat template to each conversation and complete it."""
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        texts = [self.apply_chat_template(c, add_generation_prompt) for c in convs]
        return self._run([(t, self._encode(t, add_special_tokens=False)) for t in texts], sampling_params, slo, priority)

    def apply_chat_template(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        tok = self._require_tokenizer()
        if not getattr(tok, "chat_template", None):
            raise ValueError("this model has no chat template; use generate() with a plain prompt")
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(f"{self.engine.model_path} has no tokenizer: pass prompts as lists of token ids")
        return self.tokenizer

    def _encode(self, prompt: Prompt, add_special_tokens: bool = True) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt must not be empty")
            return self._require_tokenizer()(prompt, add_special_tokens=add_special_tokens).input_ids
        return list(prompt)

    def _run(self, prompts: list[tuple[str | None, list[int]]], params, slo: SLO | None = None,
             priority: int = 0) -> list[RequestOutput]:
        if params is None:
            params = SamplingParams()
        plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(prompts):
            raise ValueError(f"got {len(plist)} sampling params for {len(prompts)} prompts")
        order: list[str] = []
        try:
            for (text, ids), p in zip(prompts, plist):
                rid = str(next(self._ids))
                self.processor.add_request(rid, text, ids, p)
                order.append(rid)
                self.engine.add_request(EngineRequest(rid, ids, p, slo=slo, priority=priority))
        except BaseException:
            for rid in order:  # all or nothing: a bad prompt leaves no request (and no block) behind
                self.engine.abort(rid)
                self.processor.abort(rid)
            raise
        results: dict[str, RequestOutput] = {}
        engine = self.engine
        try:
            flight = engine.launch() if engine.has_unfinished() else None
            while flight is not None:
                # async scheduling: step N+1 is queued behind step N on the device before N is
                # applied; otherwise it is queued after N is applied and before N's outputs are
                # detokenized. Either way, on a GPU the host's work overlaps the device's. A stop
                # string found in N ends its sequence before N+1 is applied (its token is dropped).
                outputs, ahead = engine.advance(flight)
                engine.take_verdicts()  # (a failed grammar's "error" outputs say it here)
                if ahead is None and engine.has_unfinished():
                    if engine.only_compiling():  # (nothing to step: let the grammar compile)
                        time.sleep(0.001)
                    ahead = engine.launch()
                updated, stopped = self.processor.process(outputs)
                for rid, index in stopped:
                    engine.finish_sequence(rid, index)
                results.update((r.request_id, r) for r in updated if r.finished)
                flight = ahead
        except BaseException:
            # interrupted (Ctrl-C, an error), perhaps with steps launched and not applied: end
            # this call's requests so the engine is whole for the next one
            engine.discard_in_flight()
            for rid in order:
                engine.abort(rid)
                self.processor.abort(rid)
            raise
        return [results[rid] for rid in order]
