"""Start real OpenAI-compatible servers (``transformers serve``) on loopback for the engine tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, model: Path | None, log: Path) -> None:
        """A server pinned to ``model``, or (None) one that loads the model each request names."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        argv = [sys.executable, "-m", "transformers.cli.transformers", "serve", *([str(model)] if model else [])]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self.url + "/models", timeout=2).read()
                return
            time.sleep(0.3)
        raise RuntimeError(f"transformers serve not ready after {timeout} s: {self.log.read_text()[-2000:]}")

    def requests_served(self) -> int:
        return self.log.read_text(errors="replace").count('"POST /v1/')

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def transformers_servers(models: list[Path | None], log_dir: Path) -> Iterator[list[Server]]:
    """One server per entry of ``models`` (None: not pinned to a model), started together."""
    servers: list[Server] = []
    try:
        for i, model in enumerate(models):
            servers.append(Server(model, log_dir / f"serve-{i}.log"))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()
