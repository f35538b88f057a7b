"""Shared test helpers: run the real CLI in a subprocess, like a shell line."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A shell starts background jobs (`make test &`, nohup, some cron and CI wrappers) with SIGINT
# ignored, and the commands the tests start would inherit that: the tests that interrupt them with
# SIGINT would see them run to the end. A handler here is reset to the default in each command.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
DATA = ROOT / "tests" / "data"  # carried by the project (tests/data/README.md: origin, license)


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.decode()

    def lines(self) -> list[bytes]:
        return self.stdout.splitlines()


def run_still(
    args: str | list[str],
    stdin: bytes | str | None = None,
    code: int | None = 0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> Result:
    """Run ``python -m still ARGS`` and check the exit code (``code=None`` skips the check)."""
    argv = shlex.split(args) if isinstance(args, str) else list(args)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        [sys.executable, "-m", "still", *argv],
        input=data if data is not None else b"",
        capture_output=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )
    res = Result(proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"))
    if code is not None:
        assert res.code == code, f"exit {res.code} != {code}\nstderr:\n{res.stderr}"
    return res


@pytest.fixture
def still():
    return run_still


def data_file(rel: str) -> Path:
    path = DATA / rel
    if not path.exists():
        pytest.fail(f"test data file missing: {path} (tests/data/README.md lists what the project carries)")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama-shaped model with a trained tokenizer and a ChatML template (tests/tiny_model.py)."""
    pytest.importorskip("transformers", reason="the model tests need the 'models' extra: pip install 'still[models]'")
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


# ----------------------------------------------------------------- sandboxes (red-team suites)
SANDBOXES = ["bwrap", "unshare"]


def processes_with(part: str, needle: bytes) -> list[int]:
    """Pids whose /proc/PID/PART (cmdline, environ) holds needle as one of its NUL-separated items."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/{part}", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


def sandbox_survivors() -> list[int]:
    """Processes this test run's sandboxes left alive, whatever uid they run under: every one
    carries STILL_SANDBOX=<this process's tag> in its environment (root reads any environ).
    The warm zygotes (core/sandbox_zygote.py) and the sandbox processes above them stay alive
    between runs by design and are not counted; every process of a run is."""
    from still.core.sandbox import RUN_TAG
    from still.core.sandbox_zygote import infrastructure_pids

    tagged = processes_with("environ", f"STILL_SANDBOX={RUN_TAG}".encode())
    return sorted(set(tagged) - infrastructure_pids()) if tagged else []


def assert_no_sandbox_survivors(wait_s: float = 3.0) -> None:
    import time

    deadline = time.monotonic() + wait_s
    while sandbox_survivors() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_survivors() == [], "processes from the sandbox are still alive"
