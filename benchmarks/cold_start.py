"""Cold start and memory of `kairos serve`: launch -> healthy -> first streamed token; RSS of both processes.

    python benchmarks/cold_start.py [--runs 2] [-- extra serve flags]

The first run may include one-time conversions (the GGUF tokenizer is cached under
~/.cache/kairos); later runs show the steady cold start.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from server_helpers import free_port  # noqa: E402


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def one_run(extra: list[str]) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kairos.cli", "serve", "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        healthy = time.perf_counter() - t0
        body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16, "stream": True, "temperature": 0}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line[6:])
                    if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        break
        first = time.perf_counter() - t0
        for _ in range(3):  # a little traffic, so RSS includes a working KV cache
            httpx.post(url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 64}, timeout=60)
        engine_pid = httpx.get(url + "/stats").json()["engine_pid"]
        return {"healthy_s": healthy, "first_token_s": first, "api_rss_mib": rss_mib(proc.pid),
                "engine_rss_mib": rss_mib(engine_pid)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("extra", nargs="*", help="flags passed to kairos serve (after --)")
    args = ap.parse_args()
    print(f"{'run':<4} {'healthy s':>9} {'1st token s':>11} {'API RSS MiB':>11} {'engine RSS MiB':>14} {'total MiB':>9}")
    for i in range(args.runs):
        r = one_run(args.extra)
        total = r["api_rss_mib"] + r["engine_rss_mib"]
        print(f"{i:<4} {r['healthy_s']:>9.1f} {r['first_token_s']:>11.1f} {r['api_rss_mib']:>11.0f} "
              f"{r['engine_rss_mib']:>14.0f} {total:>9.0f}")


if __name__ == "__main__":
    main()
