"""Output of a run: a rich table, a JSON result file, PNG plots; and `compare` of two result files."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kairos.bench.metrics import e2e, tpot, ttft
from kairos.bench.runner import Record


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def print_summary(s: dict, title: str, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=title)
    t.add_column("metric")
    for col in ("mean", "p50", "p90", "p99"):
        t.add_column(col + " ms", justify="right")
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"), ("e2e_s", "E2E")):
        t.add_row(label, *(_ms(s[key][c]) for c in ("mean", "p50", "p90", "p99")))
    console.print(t)
    console.print(
        f"requests {s['requests']}: completed {s['completed']}, refused {s['refused']}, expired {s['expired']}, failed {s['failed']}, "
        f"timed out {s['timed_out']} in {s['duration_s']:.1f} s\n"
        f"throughput {s['request_throughput']:.2f} req/s, {s['output_throughput']:.1f} out tok/s\n"
        f"SLO attainment {s['slo_attainment']:.1%}, goodput {s['goodput_rps']:.2f} req/s "
        f"({s['goodput_tokens_per_s']:.1f} tok/s)")
    if len(s["classes"]) > 1 or any(c != "default" for c in s["classes"]):
        ct = Table(title="per SLO class")
        for col in ("class", "requests", "met", "refused", "attainment", "goodput req/s", "TTFT p50 ms"):
            ct.add_column(col, justify="right")
        for name, c in s["classes"].items():
            ct.add_row(name, str(c["requests"]), str(c["met"]), str(c["refused"]), f"{c['slo_attainment']:.1%}",
                       f"{c['goodput_rps']:.2f}", _ms(c["ttft_s"]["p50"]))
        console.print(ct)


def write_json(path: Path, config: dict, runs: list[dict]) -> None:
    """Strict JSON (other tools read it): an infinite rate is written "inf", a NaN null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite({"config": config, "runs": runs}), indent=1, allow_nan=False))


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def plot(path_prefix: Path, runs: list[dict], records_by_run: list[list[Record]]) -> list[Path]:
    """Latency CDFs for each run; goodput and attainment vs rate when there are several rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run, recs in zip(runs, records_by_run):
        ok = [r for r in recs if r.outcome == "ok"]
        for ax, (name, fn) in zip(axes, (("TTFT", ttft), ("TPOT", tpot), ("E2E", e2e))):
            vals = sorted(v for r in ok if (v := fn(r)) is not None)
            if vals:
                ax.plot([v * 1000 for v in vals], [(i + 1) / len(vals) for i in range(len(vals))],
                        label="trace" if run["rate"] is None else f"rate {run['rate']}")
            ax.set_xlabel(f"{name} (ms)")
            ax.set_ylabel("fraction of requests")
            ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:  # (no successful request: no curve to name)
        axes[0].legend()
    fig.tight_layout()
    cdf = path_prefix.with_name(path_prefix.name + "_latency_cdf.png")
    fig.savefig(cdf, dpi=100)
    plt.close(fig)
    written.append(cdf)
    if len(runs) > 1:
        rates = [r["rate"] for r in runs]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(rates, [r["summary"]["goodput_rps"] for r in runs], "o-", label="goodput (req/s)")
        ax.plot(rates, [r["summary"]["request_throughput"] for r in runs], "s--", label="throughput (req/s)")
        ax.set_xlabel("offered rate (req/s)")
        ax2 = ax.twinx()
        ax2.plot(rates, [r["summary"]["slo_attainment"] for r in runs], "^:", color="tab:red", label="SLO attainment")
        ax2.set_ylim(0, 1.05)
        ax.legend(loc="upper left")
        ax2.legend(loc="lower right")
        fig.tight_layout()
        sweep = path_prefix.with_name(path_prefix.name + "_sweep.png")
        fig.savefig(sweep, dpi=100)
        plt.close(fig)
        written.append(sweep)
    return written


_COMPARE = [("request_throughput", "req/s", False), ("output_throughput", "out tok/s", False),
            ("goodput_rps", "goodput req/s", False), ("slo_attainment", "SLO attainment", False),
            ("ttft_s.p50", "TTFT p50 s", True), ("ttft_s.p99", "TTFT p99 s", True),
            ("tpot_s.p50", "TPOT p50 s", True), ("e2e_s.p50", "E2E p50 s", True)]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _get(d: dict, dotted: str):
    for k in dotted.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d


def compare(a_path: Path, b_path: Path, console: Console | None = None) -> None:
    """Side by side per run (matched by rate; two files of one run each are matched whatever
    their rates), with the ratio b / a."""
    console = console or Console()
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    if len(a["runs"]) == len(b["runs"]) == 1:
        pairs = [(a["runs"][0], b["runs"][0])]
    else:
        # (by the rate's text: a file of an older version holds an infinite rate as a float)
        pairs = [(ra, rb) for ra in a["runs"] for rb in b["runs"] if str(ra["rate"]) == str(rb["rate"])]
        matched = {str(ra["rate"]) for ra, _ in pairs}
        unmatched = [str(r["rate"]) for r in a["runs"] + b["runs"] if str(r["rate"]) not in matched]
        if unmatched:
            console.print(f"rates in one file only, not compared: {', '.join(dict.fromkeys(unmatched))}")
    for ra, rb in pairs:
        t = Table(title=f"rate {ra['rate']} vs {rb['rate']}")
        for col in ("metric", Path(a_path).stem, Path(b_path).stem, "b / a"):
            t.add_column(col, justify="right")
        for key, label, lower_better in _COMPARE:
            va, vb = _get(ra["summary"], key), _get(rb["summary"], key)
            ratio = "-" if not va or vb is None else f"{vb / va:.2f}"
            t.add_row(label + (" (lower better)" if lower_better else ""), _fmt(va), _fmt(vb), ratio)
        console.print(t)
