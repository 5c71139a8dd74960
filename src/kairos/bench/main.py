"""`kairos bench` and `kairos bench compare`."""

from __future__ import annotations

import asyncio
import dataclasses
import resource
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress

from kairos.bench.config import BenchConfig
from kairos.bench.metrics import capacity, summarize
from kairos.bench.report import plot, print_summary, write_json
from kairos.bench.runner import Target, auth_headers, run_load
from kairos.bench.workloads import Length, build_workload, load_trace


class BenchError(Exception):
    """A problem to report in one line (exit code 1), not a traceback."""


def resolve_model(cfg: BenchConfig) -> str:
    try:
        r = httpx.get(cfg.base_url.rstrip("/") + "/v1/models", headers=auth_headers(cfg.api_key), timeout=10)
    except httpx.HTTPError as e:
        raise BenchError(f"cannot reach the server at {cfg.base_url}: {e}") from None
    if r.status_code == 401:
        raise BenchError(f"{cfg.base_url} wants an API key: pass --api-key KEY or set $OPENAI_API_KEY")
    if r.status_code != 200:
        raise BenchError(f"{cfg.base_url}/v1/models answered HTTP {r.status_code}; is this an OpenAI-compatible server?")
    served = [m["id"] for m in r.json().get("data", [])]
    if cfg.model is None:
        if not served:
            raise BenchError(f"{cfg.base_url} serves no model")
        return served[0]
    if cfg.model not in served:
        raise BenchError(f"model {cfg.model!r} is not served by {cfg.base_url}; it serves: {', '.join(served) or 'nothing'}")
    return cfg.model


def run_bench(cfg: BenchConfig, console: Console | None = None) -> dict:
    """Run the configured workload at each rate; print, write JSON (and plots); return the result."""
    from kairos.loader import load_tokenizer, resolve_model_path

    console = console or Console()
    model = resolve_model(cfg)
    tok = load_tokenizer(resolve_model_path(cfg.tokenizer))
    if tok is None:
        raise BenchError(f"{cfg.tokenizer} has no tokenizer")
    if cfg.tokenizer == "default" and "smollm2" not in model.lower():
        console.print(f"[yellow]warning: lengths are counted with the default model's tokenizer (SmolLM2), not "
                      f"{model}'s: pass --tokenizer (its HF directory or GGUF) for exact prompt lengths[/yellow]")
    target = Target(cfg.base_url.rstrip("/"), model, cfg.endpoint, cfg.send_slo, cfg.timeout, cfg.api_key,
                    cfg.extra())
    slos = {s.name: s for s in cfg.slo_classes()}

    def count_tokens(text: str) -> int:
        return len(tok(text, add_special_tokens=False).input_ids)

    def workload(n: int, rate: float, seed: int):
        return build_workload(num_requests=n, rate=rate, arrival=cfg.arrival, burstiness=cfg.burstiness,
                              input_len=Length.parse(cfg.input_len), output_len=Length.parse(cfg.output_len),
                              prefix_len=cfg.prefix_len, num_prefix_groups=cfg.num_prefix_groups,
                              slo_classes=cfg.slo_classes(), turns=cfg.turns, tokenizer=tok, seed=seed,
                              slo_order=cfg.slo_order)

    if cfg.num_warmups:  # (the seed after every rate's: prompts no run sends)
        warm, _ = asyncio.run(run_load(workload(cfg.num_warmups, float("inf"), cfg.seed + len(cfg.rates())),
                                       target, count_tokens, None, cfg.max_concurrency))
        failed = [r for r in warm if r.outcome != "ok"]
        console.print(f"warm-up: {len(warm) - len(failed)} of {len(warm)} requests answered"
                      + (f" (first failure: {failed[0].outcome}, {failed[0].error})" if failed else ""))
    runs, all_records = [], []
    for i, rate in enumerate(cfg.rates()):
        if cfg.trace:  # (replayed at its own times: no rate, no sweep)
            specs, rate = load_trace(Path(cfg.trace), tok, cfg.seed, cfg.slo_classes()), None
        else:  # each rate its own prompts: a server's prefix cache must not serve a rate the last one's
            specs = workload(cfg.num_requests, rate, cfg.seed + i)
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        with Progress(console=console, transient=True) as progress:
            label = "trace" if rate is None else f"rate {rate} req/s"
            task = progress.add_task(label, total=len(specs))

            def advance(_, task=task) -> None:
                progress.advance(task)

            records, lag = asyncio.run(run_load(specs, target, count_tokens, advance, cfg.max_concurrency))
        ru1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
        cpu = (ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime) / wall
        s = summarize(records, slos)
        runs.append({"rate": rate, "summary": s, "client_cpu": cpu, "max_send_lag_s": lag,
                     "records": [r.to_json() for r in records]})
        all_records.append(records)
        print_summary(s, f"{model} @ {cfg.base_url}, {label}", console)
        console.print(f"client CPU {cpu:.0%} of one core; worst send lag {lag * 1000:.0f} ms")
        if lag > 0.1:
            console.print(f"[yellow]warning: the client fell behind its schedule by up to {lag:.2f} s; "
                          "the offered load was lower than asked[/yellow]")
    result: dict = {"model": model, "base_url": cfg.base_url}
    if len(runs) > 1:
        cap = capacity([(r["rate"], r["summary"]) for r in runs], cfg.target_attainment)
        result["capacity_rps"] = cap
        console.print(f"capacity at {cfg.target_attainment:.0%} SLO attainment: "
                      + (f"{cap} req/s" if cap is not None else "below the lowest swept rate"))
    out = Path(cfg.out)
    config = {**dataclasses.asdict(cfg), "api_key": "(sent)" if cfg.api_key else None, **result}  # (results get shared)
    write_json(out.with_suffix(".json"), config, runs)
    written = [out.with_suffix(".json")]
    if cfg.plots:
        written += plot(out, runs, all_records)
    console.print("wrote " + ", ".join(str(p) for p in written))
    return {"config": config, "runs": runs}
