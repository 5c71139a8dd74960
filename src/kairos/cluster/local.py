"""Replicas as local processes: ``kairos serve`` on a loopback port each, pinned to its share of
the cores (and on a GPU box to one GPU), restarted when it exits (a bounded number of times),
stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import httpx

from kairos.cluster.config import FleetConfig

logger = logging.getLogger("kairos.cluster")
RESTART_WINDOW_S = 300.0


def gpu_ids() -> list[int]:
    """CUDA indices of this machine's NVIDIA GPUs, counted from their device files (the router
    never imports torch; the files' numbers need not be CUDA's, in a container)."""
    return list(range(sum(1 for p in Path("/dev").glob("nvidia[0-9]*") if p.name[6:].isdigit())))


def _child_setup(cores: list[int]) -> None:
    # (in the child, before exec) its cores, and SIGTERM when the router dies, however it dies
    os.sched_setaffinity(0, cores)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalFleet:
    """``serve_args``: the ``kairos serve`` flags every replica gets (the engine's; not host/port)."""

    def __init__(self, cfg: FleetConfig, serve_args: list[str], env: dict[str, str] | None = None):
        self.cfg, self.serve_args = cfg, serve_args
        self.env = {**os.environ, **(env or {})}
        self.cores = cfg.core_sets()
        self.gpus = gpu_ids() if "CUDA_VISIBLE_DEVICES" not in self.env else []  # (a user's own choice stands)
        if self.gpus and cfg.replicas > len(self.gpus):
            logger.warning("%d replicas on %d GPUs: replicas share GPUs; set --gpu-memory-utilization so that "
                           "their shares fit", cfg.replicas, len(self.gpus))
        self.ports = [free_port() for _ in range(cfg.replicas)]
        self.procs: list[asyncio.subprocess.Process | None] = [None] * cfg.replicas
        self.restarts: list[list[float]] = [[] for _ in range(cfg.replicas)]
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    async def _spawn(self, i: int) -> None:
        cores = self.cores[i]
        env = {**self.env, "OMP_NUM_THREADS": str(len(cores))}
        if self.gpus:  # one GPU a replica (round the GPUs when there are more replicas)
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpus[i % len(self.gpus)])
        self.procs[i] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kairos.cli", "serve", *self.serve_args, "--host", "127.0.0.1",
            "--port", str(self.ports[i]), env=env, preexec_fn=lambda: _child_setup(cores),
            start_new_session=True)  # (its own group: a Ctrl-C reaches the router, which stops it in order)
        logger.info("replica %d: pid %d on cores %s, port %d", i, self.procs[i].pid, cores, self.ports[i])

    async def start(self, timeout: float = 600.0) -> None:
        """Start every replica and wait until each answers /health."""
        for i in range(self.cfg.replicas):
            await self._spawn(i)
        async with httpx.AsyncClient() as http:
            await asyncio.gather(*(self._ready(http, i, timeout) for i in range(self.cfg.replicas)))
        self._tasks = [asyncio.create_task(self._supervise(i)) for i in range(self.cfg.replicas)]

    async def _ready(self, http: httpx.AsyncClient, i: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[i]
            if proc.returncode is not None:
                raise RuntimeError(f"replica {i} exited with code {proc.returncode} while starting")
            try:
                if (await http.get(self.urls[i] + "/health", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"replica {i} did not become healthy in {timeout:.0f} s")

    async def _supervise(self, i: int) -> None:
        while True:
            code = await self.procs[i].wait()
            if self._stopping:
                return
            now = time.monotonic()
            self.restarts[i] = [t for t in self.restarts[i] if now - t < RESTART_WINDOW_S] + [now]
            if len(self.restarts[i]) > self.cfg.max_restarts:
                logger.error("replica %d exited with code %s; restarted %d times in %.0f s: left down", i, code,
                             self.cfg.max_restarts, RESTART_WINDOW_S)
                return
            logger.warning("replica %d exited with code %s: restarting it", i, code)
            await asyncio.sleep(0.5)
            await self._spawn(i)

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every replica (each drains: it takes no new request and finishes those it has
        within its --drain-grace), SIGKILL what is left after ``grace``."""
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        live = [p for p in self.procs if p is not None and p.returncode is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), grace)
        except (TimeoutError, asyncio.TimeoutError):
            for p in live:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in live))
