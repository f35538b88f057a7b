"""Warm zygotes: one trusted, pre-imported code-check supervisor per checking thread (root callers).

A code check used to start a whole sandbox (bwrap or the unshare root), then an interpreter, then
import the supervisor, for every response. A zygote (code_zygote.py, inside the same sandbox as
before) does the first three once; each check is then a few forks into fresh namespaces (see
code_zygote.py for what each run gets). The guarantees are those of a per-run sandbox: the same
read-only view, a fresh /tmp, pid, net, ipc and uts namespace per run, a leased uid per run, the
same rlimits, the wall-clock deadline and the output cap enforced here; the zygote never sees the
nonce or the reference tests (they go to the run's supervisor on its own stdin pipe).

Only where the caller is root (the zygote needs root's capabilities to build each run's
namespaces; without root every check keeps its own sandbox, as before) and only for the
supervisor (assert/pytest checks): stdin/stdout programs and C++ keep one sandbox per run.
``STILL_SANDBOX_ZYGOTE=0`` turns it off (the bench compares both).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import math
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from still.core.errors import StillError
from still.core.sandbox import SANDBOX_PATH, Limits, RunResult, Sandbox, lease_uid, pump

BOOT = "import sys; sys.path[0] = '/tmp/box/still'; import code_harness; import code_zygote; code_zygote.main()"
START_TIMEOUT_S = 60.0
# what code_zygote.py says when a run's set-up fails (only the trusted processes write there)
EXIT_SETUP = 71
SETUP_FAILED = b"still sandbox: setting up the run failed"
EXIT_GRACE_S = 5.0  # after the pipes close or a kill: how long the zygote may take to report


def enabled(sb: Sandbox) -> bool:
    return (
        sb.drop_to_uid
        and sb.backend in ("bwrap", "unshare")
        and os.environ.get("STILL_SANDBOX_ZYGOTE", "1") != "0"
        and hasattr(os, "pidfd_open")
        # each run's fresh /tmp would cover a Python that lives under /tmp: one sandbox per run then
        and not any(d == "/tmp" or d.startswith("/tmp/") for d in sb.python_dirs)
    )


class ZygoteGone(StillError):
    """The zygote was gone before the run started (nothing ran: the caller may run it elsewhere)."""


class RunSetupFailed(StillError):
    """The run's namespaces, mounts or privilege drop failed: nothing untrusted ran."""


class Zygote:
    """One warm zygote process and the staging directory it sees at /tmp/box."""

    def __init__(self, sb: Sandbox, files: dict[str, bytes], site: Sequence[str]) -> None:
        self.sb = sb
        self.root = tempfile.mkdtemp(prefix="still-zygote-")
        self.lock = threading.Lock()
        self.next_box = 0
        self.next_run = 0
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            os.mkdir(os.path.join(self.root, "still"), 0o755)
            for name, data in files.items():
                path = os.path.join(self.root, "still", name)
                with open(path, "wb") as f:
                    f.write(data)
                os.chmod(path, 0o644)
            os.mkdir(os.path.join(self.root, "runs"), 0o700)
            self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                # a high fd number: the unshare backend's shell uses 3
                fd = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
                argv = [sys.executable, "-S", "-B", "-c", BOOT, os.pathsep.join(site), str(fd)]
                self.log = open(os.path.join(self.root, "zygote.log"), "wb")  # noqa: SIM115 - closed in close()
                self.proc = subprocess.Popen(
                    sb.zygote_command(argv, self.root),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=self.log,
                    pass_fds=(fd,),
                    start_new_session=True,
                    env={"PATH": os.environ.get("PATH", SANDBOX_PATH)},
                )
                os.close(fd)
            finally:
                theirs.close()
            if self._receive(time.monotonic() + START_TIMEOUT_S) != {"ready": True}:
                raise StillError(f"the warm sandbox zygote did not start: {self._log_tail()}")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------ plumbing
    def _receive(self, deadline: float) -> Any:
        """The zygote's next message, or None when it is gone or silent until the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                return None
            try:
                msg = self.sock.recv(1 << 16)
            except OSError:
                return None
            return json.loads(msg) if msg else None

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.root, "zygote.log"), "rb") as f:
                return f.read()[-500:].decode("utf-8", "replace").strip() or "no message"
        except OSError:
            return "no message"

    def infrastructure_pids(self) -> set[int]:
        """Host pids of the zygote and of the sandbox processes above it (not of any run): the
        processes that stay alive between runs by design."""
        if not self.alive():
            return set()
        assert self.proc is not None
        parents: dict[int, int] = {}
        cmdlines: dict[int, bytes] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        parents[int(entry)] = int(f.read().rsplit(b")", 1)[1].split()[1])
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        cmdlines[int(entry)] = f.read()
                except (OSError, ValueError, IndexError):
                    continue
        head = [b"-S", b"-B", b"-c", BOOT.encode()]

        def is_zygote(pid: int) -> bool:  # its runs are forks of it: the same cmdline
            return cmdlines.get(pid, b"").split(b"\0")[1:5] == head

        def chain(pid: int) -> list[int]:
            path = [pid]
            while path[-1] != self.proc.pid and path[-1] in parents and len(path) < 64:  # type: ignore[union-attr]
                path.append(parents[path[-1]])
            return path if path[-1] == self.proc.pid else []  # type: ignore[union-attr]

        for pid in cmdlines:
            if is_zygote(pid) and not is_zygote(parents.get(pid, 0)):
                found = chain(pid)
                if found:
                    return set(found)
        return {self.proc.pid}

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None or self.sock.fileno() < 0:
            return False
        # between runs the zygote sends nothing: a readable socket means it closed its end
        if select.select([self.sock], [], [], 0)[0]:
            try:
                return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
            except OSError:
                return False
        return True

    def close(self) -> None:
        """End the zygote (closing its socket ends it; kill as a backstop) and remove its files."""
        if getattr(self, "sock", None) is not None:
            self.sock.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, 9)
                self.proc.wait()
        if getattr(self, "log", None) is not None:
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # ---------------------------------------------------------------------------------- runs
    @contextlib.contextmanager
    def box(self) -> Iterator[str]:
        """A fresh box directory on the host; a run sees it (only it) at /tmp/box."""
        with self.lock:
            self.next_box += 1
            name = str(self.next_box)
        path = os.path.join(self.root, "runs", name)
        os.mkdir(path, 0o755)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def run(
        self, argv: Sequence[str], *, limits: Limits, box_dir: str, stdin: bytes, preload: Sequence[str] = ()
    ) -> RunResult:
        """Run code_harness.main() with ``argv`` as its arguments in a fresh run (see the module doc)."""
        if os.path.dirname(box_dir) != os.path.join(self.root, "runs"):
            raise ValueError("the box must come from this zygote's box()")
        with self.lock, lease_uid() as uid:
            self.next_run += 1
            run_id = self.next_run
            request = {
                "op": "run",
                "id": run_id,
                "box": os.path.basename(box_dir),
                "uid": uid,
                "argv": list(argv),
                "preload": list(preload),
                "limits": {
                    "cpu_s": max(1, math.ceil(limits.cpu_s if limits.cpu_s is not None else limits.wall_s)),
                    "memory_mb": limits.memory_mb,
                    "file_size_mb": limits.file_size_mb,
                    "open_files": limits.open_files,
                    "max_procs": limits.max_procs,
                    "tmp_mb": limits.tmp_mb,
                },
            }
            return self._run(request, run_id, limits, stdin)

    def _run(self, request: dict[str, Any], run_id: int, limits: Limits, stdin: bytes) -> RunResult:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        start = time.monotonic()
        try:
            try:
                socket.send_fds(self.sock, [json.dumps(request).encode()], [in_r, out_w, err_w])
            except OSError as exc:
                os.close(in_w)
                raise ZygoteGone(f"the warm sandbox zygote is gone ({exc}): {self._log_tail()}") from None
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)

            def kill() -> None:
                with contextlib.suppress(OSError):
                    self.sock.send(json.dumps({"op": "kill", "id": run_id}).encode())

            deadline = start + limits.wall_s
            out, err, timed_out, exceeded = pump(in_w, out_r, err_r, stdin, deadline, limits.max_output_bytes, kill)
        finally:
            os.close(out_r)
            os.close(err_r)
        reply = self._receive(max(deadline, time.monotonic()) + EXIT_GRACE_S)
        if reply is None and not timed_out:
            timed_out = True  # pipes closed but the run did not end: the deadline's kill
            kill()
            reply = self._receive(time.monotonic() + EXIT_GRACE_S)
        if type(reply) is not dict or reply.get("id") != run_id or type(reply.get("exit")) is not int:
            self.close()
            raise StillError(f"the warm sandbox zygote stopped answering: {self._log_tail()}")
        rc = reply["exit"]
        if rc == EXIT_SETUP and err.startswith(SETUP_FAILED):
            raise RunSetupFailed(err.decode("utf-8", "replace").strip()[:500])
        sig = rc - 128 if 128 < rc < 128 + 65 else None
        return RunResult(rc, sig, out, err, timed_out, exceeded, time.monotonic() - start)


_local = threading.local()
_registry: list[Zygote] = []
_registry_lock = threading.Lock()


def zygote_for(sb: Sandbox, files: dict[str, bytes], site: Sequence[str]) -> Zygote:
    """This thread's warm zygote for ``sb`` (started on first use, restarted when it died)."""
    z: Zygote | None = getattr(_local, "zygote", None)
    if z is not None and (z.sb is not sb or not z.alive()):
        z.close()
        z = None
    if z is None:
        z = Zygote(sb, files, site)
        _local.zygote = z
        # the thread's locals go when the thread ends: its zygote goes with them
        _local.owner = _ThreadEnd()
        weakref.finalize(_local.owner, z.close)
        with _registry_lock:
            _registry[:] = [other for other in _registry if other.alive()]
            _registry.append(z)
    return z


class _ThreadEnd:
    """Held only by one thread's locals (a finalizer on it closes that thread's zygote)."""


def infrastructure_pids() -> set[int]:
    """Host pids that every live zygote of this process keeps alive between runs (the tests'
    leftover scans skip them; after close_zygotes() there are none)."""
    with _registry_lock:
        zygotes = list(_registry)
    return set().union(*(z.infrastructure_pids() for z in zygotes)) if zygotes else set()


def close_zygotes() -> None:
    """End every warm zygote of this process (at exit; tests call it before looking for leftovers)."""
    with _registry_lock:
        zygotes = list(_registry)
        _registry.clear()
    for z in zygotes:
        z.close()


atexit.register(close_zygotes)
