"""The solution process (UNTRUSTED once the solution is imported; stdlib only, copied into the box).

argv: code_worker.py REQUEST_FD REPLY_FD BOX SITE_DIRS FIRST_ID

Started by the supervisor (code_harness.py) with nothing but two pipes to it. It forks away from
its parent at once (so ``getppid()`` is the sandbox's init, not the supervisor, unless the
supervisor is that init), says hello with
its pid, imports ``BOX/solution.py`` as module ``solution`` when asked and then serves calls,
attribute reads and protocol operations on its objects. Nothing here is trusted: the solution
may replace any of it, and the supervisor assumes it does.
"""

from __future__ import annotations

import _signal
import builtins
import importlib.util
import io
import os
import sys
import types
from typing import TYPE_CHECKING

from code_wire import PROTOCOL_OPS, Channel, Codec, exception_info

if TYPE_CHECKING:
    from typing import Any

_OPS = PROTOCOL_OPS
_OUT_CAP = 1 << 20


class Worker:
    def __init__(self, chan: Channel, box: str, first_id: int) -> None:
        self.chan = chan
        self.box = box
        self.first_id = first_id
        self.codec = Codec("r", "h", self._proxy, self._describe, import_new=True)
        self.out = io.StringIO()

    # ---------------------------------------------------------------------------- describing
    def _describe(self, obj: Any) -> list[Any]:
        if isinstance(obj, type):
            if issubclass(obj, BaseException):
                base = next((c.__name__ for c in obj.__mro__ if c.__module__ == "builtins"), "Exception")
                return ["exc", obj.__name__, base]
            return ["class", obj.__name__]
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
            return ["func", getattr(obj, "__name__", "function")]
        return ["obj", self.codec.own_ref(type(obj))]

    def _proxy(self, hid: int, kind: Any) -> Any:
        return object.__new__(SupervisorObject)

    # ------------------------------------------------------------------------------- serving
    def drain_output(self) -> str:
        text = self.out.getvalue()[:_OUT_CAP]
        self.out.seek(0)
        self.out.truncate()
        return text

    def handle(self, msg: Any) -> list[Any]:
        enc, dec = self.codec.encode, self.codec.decode
        try:
            kind = msg[0]
            if kind == "load":
                value = enc(self.load())
                self.codec.next_id = max(self.codec.next_id, self.first_id)
                return ["ret", value, self.drain_output()]
            target = dec(msg[1])
            if kind == "call":
                args, kwargs = dec(msg[2]), dec(msg[3])
                result = target(*args, **kwargs)
                return ["ret", enc(result), self.drain_output(), [enc(args), enc(kwargs)]]
            if kind == "getattr":
                result = getattr(target, msg[2])
            elif kind == "setattr":
                setattr(target, msg[2], dec(msg[3]))
                result = None
            elif kind == "delattr":
                delattr(target, msg[2])
                result = None
            elif kind == "op":
                result = _OPS[msg[2]](target, *dec(msg[3]))
            else:
                raise ValueError(f"unknown request {kind!r}")
            return ["ret", enc(result), self.drain_output()]
        except BaseException as exc:
            return ["exc", exception_info(exc, self.codec), self.drain_output()]

    def load(self) -> dict[str, Any]:
        path = os.path.join(self.box, "solution.py")
        spec = importlib.util.spec_from_file_location("solution", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["solution"] = module
        spec.loader.exec_module(module)
        names = getattr(module, "__all__", None)
        if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
            names = [n for n in vars(module) if not n.startswith("_")]
        exports = {}
        for name in names:
            value = getattr(module, name, None)
            if isinstance(value, types.ModuleType):
                continue
            exports[name] = value
        return exports

    def serve(self) -> None:
        while True:
            self.chan.send(self.handle(self.chan.receive()))

    def ask(self, msg: list[Any]) -> Any:
        """A request to the supervisor (a callback into the tests); serves nested requests."""
        self.chan.send(msg)
        while True:
            reply = self.chan.receive()
            if reply[0] == "ret":
                return self.codec.decode(reply[1])
            if reply[0] == "exc":
                info = reply[1]
                base = getattr(builtins, info[2], Exception)
                if not (isinstance(base, type) and issubclass(base, BaseException)):
                    base = Exception
                raise base(*self.codec.decode(info[3]))
            self.chan.send(self.handle(reply))


WORKER: Worker | None = None


def _ask(msg: list[Any]) -> Any:
    assert WORKER is not None
    return WORKER.ask(msg)


def _enc(value: Any) -> Any:
    assert WORKER is not None
    return WORKER.codec.encode(value)


def _op(name: str) -> Any:
    def op(self: Any, *args: Any) -> Any:
        return _ask(["op", _enc(self), name, _enc(list(args))])

    return op


class SupervisorObject:
    """An object the tests passed in (a callback, an instance of a test-defined class)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _ask(["getattr", _enc(self), name])

    def __setattr__(self, name: str, value: Any) -> None:
        _ask(["setattr", _enc(self), name, _enc(value)])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _ask(["call", _enc(self), _enc(list(args)), _enc(kwargs)])

    __len__ = _op("len")
    __bool__ = _op("bool")
    __str__ = _op("str")
    __repr__ = _op("repr")
    __hash__ = _op("hash")
    __iter__ = _op("iter")
    __next__ = _op("next")
    __getitem__ = _op("getitem")
    __setitem__ = _op("setitem")
    __delitem__ = _op("delitem")
    __contains__ = _op("contains")
    __eq__ = _op("eq")
    __ne__ = _op("ne")
    __lt__ = _op("lt")
    __le__ = _op("le")
    __gt__ = _op("gt")
    __ge__ = _op("ge")


class _Stdin(io.TextIOBase):
    """sys.stdin of the solution: reads what the tests' sys.stdin gives (monkeypatched or not)."""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        return str(_ask(["stdin", "read", size if size is not None else -1]))

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        return str(_ask(["stdin", "readline", size if size is not None else -1]))

    def readlines(self, hint: int = -1) -> list[str]:  # type: ignore[override]
        return list(_ask(["stdin", "readlines", hint]))


def forked(req_fd: int, rep_fd: int, box: str, site: str, first_id: int) -> None:
    """In a child the supervisor forked BEFORE it read any secret: drop everything it inherited."""
    keep = sorted((req_fd, rep_fd))
    os.closerange(3, keep[0])
    os.closerange(keep[0] + 1, keep[1])
    os.closerange(keep[1] + 1, 1 << 16)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    _detach_and_serve(req_fd, rep_fd, box, site, first_id)


def main() -> None:
    """A fresh interpreter (after the first solution process died): argv carries the pipes."""
    req_fd, rep_fd, box, site, first_id = sys.argv[1:6]
    _detach_and_serve(int(req_fd), int(rep_fd), box, site, int(first_id))


def _detach_and_serve(req_fd: int, rep_fd: int, box: str, site: str, first_id: int) -> None:
    global WORKER
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
    os.setsid()
    # Reparent to the namespace's init, so getppid() never leads to the supervisor. When the
    # supervisor IS that init (a warm zygote's run, code_zygote.py) there is nothing to gain
    # (and init ignores signals from inside its namespace): one fork fewer.
    if os.getppid() != 1 and os.fork() > 0:
        os._exit(0)
    sys.path[0] = box
    sys.path[1:] = [p for p in sys.path[1:] if not p.endswith("/still")]
    sys.path.extend(d for d in site.split(os.pathsep) if d and d not in sys.path)
    sys.set_int_max_str_digits(0)
    chan = Channel(req_fd, rep_fd)
    WORKER = Worker(chan, box, first_id)
    sys.stdout = sys.stderr = WORKER.out
    sys.stdin = _Stdin()
    builtins.input = lambda prompt="": str(_ask(["input", str(prompt)]))
    sys.argv = [os.path.join(box, "solution.py")]
    chan.send(["hello", os.getpid()])
    try:
        WORKER.serve()
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
