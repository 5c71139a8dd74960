"""What the router adds: an upstream reached directly and through `kairos router` in front of
it, alternating, in one run.

    python benchmarks/router_overhead.py [--requests 200] [--streams 16] [--tokens 128]

Per request: p50 latency of short non-streamed completions (1 output token), direct and routed,
and the difference, twice: in front of a null upstream (a few lines of asyncio that answer at
once: the router's own cost) and in front of one replica of the default model (what a client
sees; on a small machine the router shares the cores with the replica); the router's own
arrival-to-send time (its metric).
Per token: CPU seconds of the router process per streamed token, next to the replica's (its API
and engine processes), for --streams concurrent streams of --tokens tokens each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time

import httpx
import psutil

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from server_helpers import ServerProcess, free_port  # noqa: E402

NULL_BODY = b'{"id":"x","object":"text_completion","choices":[{"index":0,"text":" Paris","finish_reason":"length"}]}'


def null_upstream(port: int) -> None:
    """An OpenAI-ish server that answers every completion at once (and 404 to the state channel)."""
    def answer(status: bytes, body: bytes) -> bytes:
        return b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: " + \
            str(len(body)).encode() + b"\r\n\r\n" + body

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                n = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0)
                await r.readexactly(n)
                line = head.split(b"\r\n", 1)[0]
                w.write(answer(b"404 Not Found", b"{}") if b"/stats" in line else
                        answer(b"200 OK", b'{"data":[{"id":"m","object":"model"}]}') if b"/v1/models" in line else
                        answer(b"200 OK", b"{}") if b"/health" in line else answer(b"200 OK", NULL_BODY))
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            w.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(serve())


def p50_pair(a: str, b: str, n: int) -> tuple[float, float]:
    body = {"prompt": "The capital of France is", "max_tokens": 1}
    lat: dict[str, list[float]] = {a: [], b: []}
    with httpx.Client(timeout=60) as c:
        for i in range(n + 10):
            for url in (a, b)[:: 1 if i % 2 else -1]:
                t = time.perf_counter()
                assert c.post(url + "/v1/completions", json=body).status_code == 200
                if i >= 10:  # (warm-up)
                    lat[url].append(time.perf_counter() - t)
    return statistics.median(lat[a]), statistics.median(lat[b])


def cpu_s(pid: int, children: bool = True) -> float:
    procs = [psutil.Process(pid)] + (psutil.Process(pid).children(recursive=True) if children else [])
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


async def stream_all(url: str, n: int, tokens: int) -> int:
    async with httpx.AsyncClient(timeout=600) as c:
        async def one(i: int) -> int:
            body = {"prompt": f"Story {i}: once upon a time", "max_tokens": tokens, "ignore_eos": True, "stream": True}
            got = 0
            async with c.stream("POST", url + "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    got += line.startswith("data: {")
            return got
        return sum(await asyncio.gather(*(one(i) for i in range(n))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--null-upstream", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.null_upstream is not None:
        null_upstream(args.null_upstream)
        return
    port = free_port()
    null = subprocess.Popen([sys.executable, __file__, "--null-upstream", str(port)])
    time.sleep(1)
    router = ServerProcess("--upstream", f"http://127.0.0.1:{port}", "--tokenizer", "default", command="router",
                           keep_log=False)
    try:
        d, r = p50_pair(f"http://127.0.0.1:{port}", router.url, args.requests)
        print(f"null upstream, per request (p50 of {args.requests}): direct {d * 1000:.3f} ms, via router "
              f"{r * 1000:.3f} ms, added {(r - d) * 1000:.3f} ms")
    finally:
        router.stop()
        null.kill()
    replica = ServerProcess(keep_log=False)
    router = ServerProcess("--upstream", replica.url, "--tokenizer", "default", command="router", keep_log=False)
    try:
        d, r = p50_pair(replica.url, router.url, args.requests)
        metrics = httpx.get(router.url + "/metrics").text
        own_sum = float(re.search(r"^kairos_router_overhead_seconds_sum (\S+)", metrics, re.M).group(1))
        own_n = float(re.search(r"^kairos_router_overhead_seconds_count (\S+)", metrics, re.M).group(1))
        print(f"one replica, per request (p50 of {args.requests}): direct {d * 1000:.2f} ms, via router {r * 1000:.2f} ms, "
              f"added {(r - d) * 1000:.2f} ms; router's arrival-to-send mean {own_sum / own_n * 1000:.3f} ms")
        rep0, rt0 = cpu_s(replica.proc.pid), cpu_s(router.proc.pid, children=False)
        tokens = asyncio.run(stream_all(router.url, args.streams, args.tokens))
        rep1, rt1 = cpu_s(replica.proc.pid), cpu_s(router.proc.pid, children=False)
        print(f"per token ({tokens} streamed): router {(rt1 - rt0) / tokens * 1e6:.1f} us CPU, replica "
              f"{(rep1 - rep0) / tokens * 1e6:.1f} us CPU: router / replica = {(rt1 - rt0) / (rep1 - rep0) * 100:.1f}%")
    finally:
        router.stop()
        replica.stop()


if __name__ == "__main__":
    main()
