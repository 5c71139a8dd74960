"""Streamed answers (server-sent events) and the usage block of a response."""

from __future__ import annotations

import logging

from fastapi.responses import StreamingResponse

from kairos.server import tools as tool_calls
from kairos.server.serving import (
    APIError,
    chat_logprobs,
    completion_logprobs,
    header,
    merge,
    sse,
    usage,
    vllm_prompt_logprobs,
)

logger = logging.getLogger(__name__)


def token_counts(tracked, generated: bool = True) -> dict:
    """OpenAI usage summed over the prompts; ``generated``: False when no output is returned (echo
    with ``max_tokens`` 0)."""
    tot = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for tr in tracked:
        for k, v in usage(len(tr.output.prompt_token_ids), tr.output.outputs if generated else []).items():
            tot[k] += v
    return tot


def total_usage(tracked, generated: bool = True) -> dict:
    """:func:`token_counts`, plus ``kairos``: timings and SLO verdicts per prompt."""
    tot = token_counts(tracked, generated)
    reports = [tr.slo_report() for tr in tracked]
    tot["kairos"] = reports[0] if len(reports) == 1 else reports
    return tot


def stream(rid: str, kind: str, model: str, runs, tracked, n: int, req, chat: bool,
            echo: list[str] | None = None, tools: tool_calls.ToolPlan | None = None) -> StreamingResponse:
    """``echo``: per prompt, its text, sent ahead of each choice's first chunk (with its tokens'
    logprobs when asked); vLLM's ``prompt_logprobs`` go with a choice's (chat: the stream's) first chunk."""
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    continuous = include_usage and req.stream_options.continuous_usage_stats
    echo_only = not chat and req.echo_only

    async def body():
        head = header(kind, rid, model)  # (one ``created`` for every chunk, as OpenAI's)
        sent_role: set[int] = set()
        begun: set[int] = set()  # choices whose first chunk is out
        sent_lp: dict[int, int] = {}
        offsets: dict[int, int] = {}  # (completions) the text offset of a choice's next token
        calls: dict[int, tool_calls.ToolStream] = {}
        chunks = merge(runs)
        try:
            async for i, (tr, index) in chunks:
                o = tr.output.outputs[index]
                if not o.delta and not o.finish_reason and o.logprobs is None:
                    continue  # text held back (partial character or possible stop string)
                idx = i * n + index
                start = sent_lp.get(idx, 0)
                sent_lp[idx] = len(o.logprobs) if o.logprobs is not None else 0
                why = o.finish_reason
                first = idx not in begun
                if chat:
                    if tools is not None:
                        delta, why = calls.setdefault(idx, tool_calls.ToolStream(tools)).delta(o.delta, o.text, why)
                        if not delta and not why and idx in sent_role and o.logprobs is None:
                            continue  # ("required" calls are held until they are whole)
                    else:
                        delta = {"content": o.delta}
                    if idx not in sent_role:
                        delta["role"] = "assistant"
                        sent_role.add(idx)
                    choice = {"index": idx, "delta": delta, "logprobs": chat_logprobs(o, start)}
                else:
                    text = "" if echo_only else o.delta
                    prompt = None
                    if echo is not None and first:  # (the prompt goes out with a choice's first chunk)
                        text, prompt = echo[i] + text, tr.output.prompt_logprobs
                    lp = completion_logprobs(o, start, prompt, not echo_only, offsets.get(idx, 0))
                    if lp is not None and lp["tokens"]:
                        offsets[idx] = lp["text_offset"][-1] + len(lp["tokens"][-1])
                    choice = {"index": idx, "text": text, "logprobs": lp}
                    if first and req.prompt_logprobs is not None:
                        choice["prompt_logprobs"] = vllm_prompt_logprobs(tr.output.prompt_logprobs)
                choice["finish_reason"] = why
                if o.finish_reason:
                    choice["stop_reason"] = o.stop_reason
                chunk = {}
                if chat and req.prompt_logprobs is not None and not begun:  # (with the stream's first chunk)
                    chunk["prompt_logprobs"] = vllm_prompt_logprobs(tr.output.prompt_logprobs)
                if continuous:  # (the request's so far: every prompt's tokens, the outputs' until now)
                    chunk["usage"] = token_counts(tracked, not echo_only)
                begun.add(idx)
                yield sse({**head, **chunk, "choices": [choice]})
        except APIError as e:
            yield sse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
            return
        except Exception as e:  # (a defect: the stream still ends with an error, not a cut connection)
            logger.exception("stream %s failed", rid)
            yield sse({"error": {"message": f"internal error: {type(e).__name__}", "type": "server_error",
                                 "param": None, "code": None}})
            return
        finally:  # (closed here, not by the collector: each request's end, and its slot, now)
            await chunks.aclose()
        if include_usage:
            yield sse({**head, "choices": [], "usage": total_usage(tracked, not echo_only)})
        yield sse("[DONE]")

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
