"""A small pool of killable worker processes with a hard wall-clock cap per task.

Why not SIGALRM (math-verify's timeout) or a thread pool: an alarm only fires between bytecodes, so
it cannot stop C-level big-integer work (``10^{10^6}``), and it does not work off the main thread.
Here each task runs in a worker process; when a task is still running at its deadline the worker is
killed (SIGKILL), the task gets status ``timeout`` and a fresh worker takes its place.

Workers are forked from a ``forkserver`` that has already imported the heavy modules (``preload``),
so a replacement is ready in milliseconds instead of re-importing SymPy. A task's clock starts when
it is handed to a ready worker, never while a worker is still starting.

Results come back in submission order (the caller keeps its own queue of :class:`Task` objects),
so the output does not depend on the number of workers. Nor on load or on when the caller looks:
the cap is CPU time, as the kernel counts it for the worker. A worker reports each task's CPU
seconds, and a task over the cap is a ``timeout`` even when its answer is read late (a caller busy
elsewhere, e.g. waiting on a code run, cannot turn a timeout into ``ok``); at the wall-clock
deadline a worker that has not used its CPU budget (starved on a loaded machine) gets the rest,
up to a wall-clock backstop of ``BACKSTOP`` times the cap (tasks that block without computing).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import time
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from still.core.errors import StillError

_READY = "ready"
BACKSTOP = 4.0  # wall-clock limit per task, in multiples of the CPU cap (at least cap + 2 s)
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) the process has used, from /proc; None where unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Task:
    """One unit of work; ``status`` becomes ``ok``, ``timeout`` or ``error`` when done."""

    payload: Any
    status: str = "pending"
    result: Any = None
    error: str = ""
    seconds: float = 0.0  # wall time from hand-over to the worker until the answer (or the kill)

    @property
    def done(self) -> bool:
        return self.status != "pending"


def _resolve(path: str) -> Callable[[Any], Any]:
    module, _, name = path.partition(":")
    fn: Callable[[Any], Any] = getattr(importlib.import_module(module), name)
    return fn


def _worker_main(conn: Connection, handler_path: str, memory_mb: int) -> None:
    """Worker loop: answer ("ok", result, seconds) or ("error", message, seconds) per payload until EOF."""
    if memory_mb > 0:
        try:
            import resource

            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    handler = _resolve(handler_path)
    conn.send(_READY)
    while True:
        try:
            payload = conn.recv()
        except (EOFError, OSError):
            return
        started = time.process_time()
        try:
            reply: tuple[str, Any] = ("ok", handler(payload))
        except MemoryError:
            reply = ("error", "out of memory")
        except RecursionError:
            reply = ("error", "recursion limit")
        except Exception as exc:  # noqa: BLE001 - reported as the task's error, the worker lives on
            reply = ("error", f"{type(exc).__name__}: {exc}"[:300])
        try:
            conn.send((*reply, time.process_time() - started))
        except (OSError, ValueError):
            return


def start_forkserver(preload: list[str]) -> None:
    """Start the forkserver now, importing ``preload``, so that its start-up overlaps this
    process's own imports and reading; pool workers started later fork from it at once."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    from multiprocessing import forkserver

    multiprocessing.set_forkserver_preload(preload)
    # The server runs as `python -c`, so its sys.path[0] is its working directory, and Python
    # 3.11 ignores the sys.path it is handed: started from a folder holding another `still/`
    # (a second checkout) or `numpy/`, it would import those. Start it in the standard
    # library's own folder (nothing there shadows anything); its workers keep that directory
    # and are only ever given absolute paths.
    here = os.getcwd()
    os.chdir(os.path.dirname(os.__file__))
    try:
        forkserver.ensure_running()
    finally:
        os.chdir(here)


class _Worker:
    def __init__(self, ctx: Any, handler_path: str, memory_mb: int) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child_conn, handler_path, memory_mb), daemon=True)
        # The worker needs only the handler's module. Hide the caller's __main__ while starting it,
        # so forkserver/spawn do not re-import (and re-run) a user's script without a main guard.
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            self.proc.start()
        finally:
            if main is not None:
                sys.modules["__main__"] = main
        child_conn.close()
        self.conn: Connection = parent_conn
        self.ready = False
        self.task: Task | None = None
        self.started = 0.0
        self.deadline = 0.0
        self.backstop = 0.0
        self.cpu_start: float | None = None

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(timeout=5)
        except (OSError, ValueError, AssertionError):
            pass
        self.conn.close()


class KillablePool:
    """``workers`` processes running ``handler_path`` (``module:function``) on payloads.

    Call :meth:`submit`, then :meth:`pump` until the task is done; :meth:`close` at the end.
    """

    def __init__(
        self,
        handler_path: str,
        workers: int = 1,
        timeout_s: float = 2.0,
        preload: tuple[str, ...] = (),
        memory_mb: int = 0,
    ) -> None:
        self.handler_path = handler_path
        self.n_workers = max(1, workers)
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        methods = multiprocessing.get_all_start_methods()
        self.ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            start_forkserver(list(preload))  # in a neutral folder: see start_forkserver
        self.workers: list[_Worker] = []
        self.queue: deque[Task] = deque()
        self.restarts = 0
        self.failed_starts = 0

    def _ensure_workers(self) -> None:
        while len(self.workers) < self.n_workers:
            self.workers.append(_Worker(self.ctx, self.handler_path, self.memory_mb))

    def submit(self, payload: Any) -> Task:
        task = Task(payload)
        self.queue.append(task)
        self._ensure_workers()
        self._dispatch()
        return task

    def _dispatch(self) -> None:
        for worker in self.workers:
            if not self.queue:
                return
            if worker.ready and worker.task is None:
                task = self.queue.popleft()
                try:
                    worker.conn.send(task.payload)
                except (OSError, ValueError):
                    self.queue.appendleft(task)
                    self._replace(worker)
                    continue
                worker.task = task
                worker.started = time.monotonic()
                worker.deadline = worker.started + self.timeout_s
                worker.backstop = worker.started + max(BACKSTOP * self.timeout_s, self.timeout_s + 2.0)
                worker.cpu_start = _cpu_seconds(worker.proc.pid)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        idx = self.workers.index(worker)
        self.workers[idx] = _Worker(self.ctx, self.handler_path, self.memory_mb)
        self.restarts += 1

    def _finish(self, worker: _Worker, status: str, result: Any = None, error: str = "") -> None:
        task = worker.task
        assert task is not None
        task.status = status
        task.result = result
        task.error = error
        task.seconds = time.monotonic() - worker.started
        worker.task = None

    def next_deadline(self) -> float | None:
        """The monotonic time at which the earliest running task runs out (None when none runs)."""
        deadlines = [w.deadline for w in self.workers if w.task is not None]
        return min(deadlines) if deadlines else None

    def busy(self) -> bool:
        return bool(self.queue) or any(w.task is not None for w in self.workers)

    def pump(self, block: bool) -> None:
        """Collect answers, kill workers past their deadline, hand out queued tasks.

        With ``block``, wait until at least one task finishes (or nothing is pending).
        """
        while True:
            progressed = self._pump_once(wait_s=None if block else 0.0)
            if progressed or not block or not self.busy():
                return

    def _pump_once(self, wait_s: float | None) -> bool:
        progressed = False
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.task is not None and now >= worker.deadline:
                # Check for a last-moment answer before killing: a finished task is not a timeout.
                if worker.conn.poll(0):
                    continue
                used = _cpu_seconds(worker.proc.pid)
                if used is not None and worker.cpu_start is not None and now < worker.backstop:
                    left = self.timeout_s - (used - worker.cpu_start)
                    if left > 0.02:  # starved, not slow: the rest of its CPU budget
                        worker.deadline = min(now + left, worker.backstop)
                        continue
                self._finish(worker, "timeout", error=f"over {self.timeout_s:g} s")
                self._replace(worker)
                progressed = True
        self._dispatch()
        conns = {w.conn: w for w in self.workers if (w.task is not None or not w.ready)}
        if not conns:
            return progressed
        if wait_s is None:
            deadlines = [w.deadline for w in self.workers if w.task is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 5.0
        else:
            timeout = wait_s
        for conn in wait(list(conns), timeout=timeout):
            worker = conns[conn]  # type: ignore[index]
            try:
                msg = worker.conn.recv()
            except (EOFError, OSError):
                worker.proc.join(timeout=1)
                code = worker.proc.exitcode
                if worker.task is not None:
                    self._finish(worker, "error", error=f"worker died (exit code {code})")
                    progressed = True
                elif not worker.ready:
                    self.failed_starts += 1
                    if self.failed_starts > 3:
                        why = f"worker processes for {self.handler_path} fail to start (exit code {code})"
                        raise StillError(why) from None
                self._replace(worker)
                continue
            if msg == _READY:
                worker.ready = True
                self.failed_starts = 0
            elif worker.task is not None:
                status, value, cpu = msg
                if cpu > self.timeout_s:  # finished, but over the cap: read late, still a timeout
                    self._finish(worker, "timeout", error=f"over {self.timeout_s:g} s")
                elif status == "ok":
                    self._finish(worker, "ok", result=value)
                else:
                    self._finish(worker, "error", error=str(value))
                progressed = True
        self._dispatch()
        return progressed

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.close()
            except OSError:
                pass
        for worker in self.workers:
            worker.proc.join(timeout=0.5)
            if worker.proc.is_alive():
                worker.kill()
        self.workers = []

    def __enter__(self) -> KillablePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
