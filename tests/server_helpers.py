"""Start a real `kairos serve` on 127.0.0.1 for a test, and stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from kairos.cluster.local import free_port


class ServerProcess:
    """``env``: added to the environment; ``keep_log=False``: its output is dropped (a long
    benchmark would fill the pipe that keeps it); ``command``: ``router`` starts a router."""

    def __init__(self, *args: str, timeout: float = 180.0, env: dict[str, str] | None = None,
                 keep_log: bool = True, port: int | None = None, command: str = "serve"):
        if "--dtype" not in args and command == "serve":  # the tests' expectations are float32's, whatever the CPU has
            args = (*args, "--dtype", "float32")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kairos.cli", command, "--port", str(self.port), *args],
            stdout=subprocess.PIPE if keep_log else subprocess.DEVNULL, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError("server did not become healthy")

    def stats(self) -> dict:
        return httpx.get(self.url + "/stats", timeout=5).json()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.proc.stdout.read() if self.proc.stdout else ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
