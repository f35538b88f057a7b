"""The supervisor's side of the solution process: spawn it, call into it, stand-ins for its objects.

Runs in the TRUSTED process inside the sandbox (stdlib only; copied into the box, not imported by
still). The solution runs in another process (code_worker.py) that never sees the nonce, the
reference tests or this process's memory. Everything it returns is plain data (code_wire.py) or
a handle to one of its objects; a handle's stand-in here forwards attribute access, calls and
its own unary protocols (``len``, ``bool``, ``str``, ``iter``...) to the solution process, but
comparisons and arithmetic with anything that is not itself a handle are decided HERE, by
Python's defaults (``==`` is identity, ``<`` and ``-`` raise TypeError): an "always equal"
object, an ``int`` subclass with a rigged ``__eq__`` or a float whose ``__sub__`` returns 0
cannot make a check on a value pass. Between two handles the solution's own methods decide.
"""

from __future__ import annotations

import builtins
import os
import sys
import types
from typing import TYPE_CHECKING

from code_wire import PROTOCOL_OPS, Channel, Codec, PeerGone, PeerTimeout, WireError, exception_info

if TYPE_CHECKING:
    from typing import Any

_OUT_CAP = 1 << 20  # solution output forwarded per reply


class SolutionFailed(BaseException):  # noqa: N818 - not an Exception: test code must not catch it
    """The solution process ended, hung past the per-test limit or broke the protocol."""

    def __init__(self, verdict: str, message: str) -> None:
        super().__init__(message)
        self.verdict = verdict


class Peer:
    """The solution process and the request/reply loop with it (callbacks served while waiting)."""

    def __init__(self, box: str, site: list[str], worker: str) -> None:
        """``worker``: the ``python -c`` code that starts code_worker.main()."""
        self.box, self.site, self.worker = box, site, worker
        self.child = 0  # the process we started (its group holds the solution process)
        self.pid = 0  # the solution process, as it said before the solution was imported
        self.preforked: tuple[int, Channel] | None = None
        self.chan: Channel | None = None
        self.generation = 0
        self.failure: SolutionFailed | None = None  # what broke the current test, if anything
        self.codec = Codec("h", "r", _make_proxy, _describe, import_new=False)
        self.exports_wire: Any = None
        self.writeback: Any = None  # the arguments' state after the last call (see _write_back)
        self.deadline: float | None = None

    # ---------------------------------------------------------------------------- lifecycle
    def prefork(self) -> None:
        """Fork the first solution process now, BEFORE this process reads the nonce and the tests:
        its copy of this memory holds neither (and one interpreter start is saved)."""
        import code_worker

        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(req_w)
                os.close(rep_r)
                code_worker.forked(req_r, rep_w, self.box, os.pathsep.join(self.site), 1_000_000_000)
            finally:
                os._exit(70)
        os.close(req_r)
        os.close(rep_w)
        self.preforked = (pid, Channel(rep_r, req_w))

    def _spawn(self) -> None:
        """A fresh interpreter for the solution (after the first process died or hung)."""
        import subprocess

        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        argv = [sys.executable, "-S", "-B", "-c", self.worker, str(req_r), str(rep_w), self.box]
        argv += [os.pathsep.join(self.site), str(self.generation * 1_000_000_000)]
        try:
            # stdin/stdout/stderr are /dev/null; the pipes are all it inherits.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(req_r, rep_w),
                close_fds=True,
            )
        finally:
            os.close(req_r)
            os.close(rep_w)
        self.child = proc.pid
        self.chan = Channel(rep_r, req_w)

    def start(self) -> dict[str, Any]:
        """Start a solution process, import the solution there; its public names as stand-ins.

        The solution's parent is an intermediate that exits at once, so getppid() never leads
        the solution to this process."""
        self.stop()
        self.generation += 1
        if self.preforked is not None:
            self.child, self.chan = self.preforked
            self.preforked = None
        else:
            self._spawn()
        assert self.chan is not None
        self.codec.objects.clear()
        self.codec.ids.clear()
        self.failure = None
        self._arm()
        try:
            hello = self.chan.receive()  # sent before the solution is imported: trustworthy
            if type(hello) is not list or len(hello) != 2 or hello[0] != "hello" or type(hello[1]) is not int:
                raise WireError("bad hello")
            self.pid = hello[1]
            if self.pid != self.child:
                os.waitpid(self.child, 0)  # the intermediate it forked away from (see code_worker)
            wire = self._request(["load"], raw=True)
        except (PeerGone, WireError, PeerTimeout) as exc:
            raise self._fail(exc) from None
        # The tests hold stand-ins from the first import: a fresh process must give the same
        # names the same ids (plain values may differ: a pid, a random seed).
        if self.exports_wire is not None and _shape(wire) != _shape(self.exports_wire):
            raise self._fail(WireError("the solution's module differs from its first import"))
        self.exports_wire = wire
        exports: dict[str, Any] = {}
        if type(wire) is list and len(wire) == 2 and wire[0] == "d" and type(wire[1]) is list:
            for pair in wire[1]:
                try:
                    if type(pair) is list and len(pair) == 2 and type(pair[0]) is str:
                        exports[pair[0]] = self.codec.decode(pair[1])
                except WireError:
                    continue  # e.g. a module only the solution imports; tests that need it fail
        return exports

    def stop(self) -> None:
        if not self.child:
            return
        try:
            os.killpg(self.child, 9)  # the group the solution process was started in
        except OSError:
            pass
        if self.pid > 1:
            try:
                os.kill(self.pid, 9)  # in case it left that group
            except OSError:
                pass
        try:
            os.waitpid(self.child, os.WNOHANG)
        except ChildProcessError:
            pass
        if self.chan is not None:
            for fd in (self.chan.read_fd, self.chan.write_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.child = 0
        self.chan = None
        self.pid = 0

    def _arm(self) -> None:
        if self.chan is not None:
            self.chan.deadline = self.deadline

    def _fail(self, exc: BaseException) -> SolutionFailed:
        if isinstance(exc, PeerTimeout):
            failure = SolutionFailed("time_limit", "the solution did not answer within the time limit")
        elif isinstance(exc, PeerGone):
            failure = SolutionFailed("runtime_error", "the solution process ended (it exited, crashed or was killed)")
        else:
            failure = SolutionFailed("runtime_error", f"the solution process broke the protocol: {exc}")
        self.stop()
        self.failure = failure
        return failure

    # ------------------------------------------------------------------------------ requests
    def request(self, msg: list[Any]) -> Any:
        if self.failure is not None:
            raise SolutionFailed(self.failure.verdict, str(self.failure))
        if self.chan is None:
            raise SolutionFailed("runtime_error", "the solution process is not running")
        try:
            return self._request(msg, raw=False)
        except (PeerGone, WireError, PeerTimeout) as exc:
            raise self._fail(exc) from None

    def _request(self, msg: list[Any], raw: bool) -> Any:
        assert self.chan is not None
        self._arm()
        self.chan.send(msg)
        while True:
            reply = self.chan.receive()
            if type(reply) is not list or not reply or type(reply[0]) is not str:
                raise WireError("bad reply")
            kind = reply[0]
            if kind in ("ret", "exc"):
                if len(reply) >= 3 and type(reply[2]) is str:
                    _forward_output(reply[2])
                if kind == "exc":
                    exc = self._remote_exception(reply[1] if len(reply) > 1 else None)
                    if (
                        isinstance(exc, (StopIteration, StopAsyncIteration))
                        and msg[:1] != ["op"]
                        or (isinstance(exc, StopIteration) and msg[:1] == ["op"] and msg[2:3] != ["next"])
                    ):
                        # Only next() may end an iteration: a StopIteration out of a call would
                        # silently stop the test's own loop (all(map(candidate, cases)) is True).
                        exc = RuntimeError(f"the solution raised {type(exc).__name__} outside next()")
                    raise exc
                value = reply[1] if len(reply) > 1 else None
                if len(reply) > 3:
                    self.writeback = reply[3]
                return value if raw else self.codec.decode(value)
            self.chan.send(self._serve(reply))

    def call(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        enc = self.codec.encode
        self.writeback = None
        result = self.request(["call", enc(target), enc(list(args)), enc(kwargs)])
        _write_back(self.codec, list(args), kwargs, self.writeback)
        return result

    # -------------------------------------------------------------------- the worker's asks
    def _serve(self, msg: list[Any]) -> list[Any]:
        """Answer a request from the solution process: only calls into objects the tests passed
        it, public attributes of plain instances and protocol operations."""
        try:
            value = _serve_request(self.codec, msg)
            return ["ret", self.codec.encode(value)]
        except (SolutionFailed, PeerGone, PeerTimeout):
            raise
        except WireError:
            raise
        except BaseException as exc:  # the test's callback raised: the solution sees it
            return ["exc", exception_info(exc, self.codec)]

    def _remote_exception(self, info: Any) -> BaseException:
        """The exception the solution raised, as one of OUR classes (never a test-outcome class)."""
        if type(info) is not list or len(info) != 6 or not all(type(i) is str for i in info[:3]):
            raise WireError("bad exception")
        module, qualname, base_name, args_wire, ref, text = info
        try:
            args = self.codec.decode(args_wire)
        except WireError:
            args = (str(text),)
        if type(args) is not tuple:
            args = (str(text),)
        cls: Any = None
        if ref is not None:
            cls = self.codec.decode(ref)
            if not (isinstance(cls, type) and cls in _EXC_CLASSES):
                raise WireError("exception class is not the solution's")
        elif module == "builtins":
            cls = getattr(builtins, qualname, None)
        elif module in sys.modules and module.split(".")[0] in _STDLIB_EXCEPTION_SOURCES:
            cls = sys.modules[module]
            for part in qualname.split("."):
                cls = getattr(cls, part, None)
        if not (isinstance(cls, type) and issubclass(cls, Exception)) or issubclass(cls, _outcomes()):
            cls = _exception_class(qualname.rsplit(".", 1)[-1], base_name)
        try:
            exc: BaseException = cls.__new__(cls)
            exc.args = args
        except Exception:
            exc = _exception_class(qualname.rsplit(".", 1)[-1], base_name)(*args)
        return exc


PEER: Peer | None = None


def _shape(wire: Any) -> list[Any]:
    """The exported names and the object ids of those that are handles."""
    if type(wire) is not list or len(wire) != 2 or type(wire[1]) is not list:
        return []
    return [
        [p[0], p[1][:2] if type(p[1]) is list and p[1][:1] == ["r"] else None] for p in wire[1] if type(p) is list and p
    ]


# Where the solution's exceptions may name a class of ours (json.JSONDecodeError...): the standard
# library, but never a test outcome (unittest.SkipTest would turn a failure into a skip).
_STDLIB_EXCEPTION_SOURCES = frozenset(getattr(sys, "stdlib_module_names", ())) - {"unittest", "doctest"}


def _outcomes() -> tuple[type, ...]:
    case = sys.modules.get("unittest.case")
    return (case.SkipTest,) if case is not None else ()


def _peer() -> Peer:
    if PEER is None:
        raise SolutionFailed("runtime_error", "no solution process")
    return PEER


def _forward_output(text: str) -> None:
    if text:
        try:
            sys.stdout.write(text[:_OUT_CAP])
        except Exception:
            pass


def _write_back(codec: Codec, args: list[Any], kwargs: dict[str, Any], wire: Any) -> None:
    """Give mutable arguments the state the solution left them in (in-place sorts and the like)."""
    if type(wire) is not list or len(wire) != 2:
        return
    try:
        new_args, new_kwargs = codec.decode(wire[0]), codec.decode(wire[1])
    except WireError:
        return
    pairs = list(zip(args, new_args if type(new_args) is list else [], strict=False))
    if type(new_kwargs) is dict:
        pairs += [(v, new_kwargs[k]) for k, v in kwargs.items() if k in new_kwargs]
    for old, new in pairs:
        if type(old) is not type(new) or old is new:
            continue
        if type(old) is list or type(old) is bytearray:
            old[:] = new
        elif type(old) is dict or type(old) is set:
            old.clear()
            old.update(new)


# --------------------------------------------------------------------------- serving the worker
_OPAQUE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.GeneratorType,
    types.CoroutineType,
    types.AsyncGeneratorType,
    types.FrameType,
    types.TracebackType,
    types.CodeType,
    types.CellType,
)
# what the solution may do to objects the tests passed it (no arithmetic on the tests' objects)
_OPS = {k: v for k, v in PROTOCOL_OPS.items() if k not in ("add", "sub", "mul")}


def _serve_request(codec: Codec, msg: list[Any]) -> Any:
    kind = msg[0]
    if kind == "input" and len(msg) == 2 and type(msg[1]) is str:
        return builtins.input(msg[1])
    if kind == "stdin" and len(msg) == 3 and msg[1] in ("read", "readline", "readlines"):
        arg = msg[2] if type(msg[2]) is int else -1
        return getattr(sys.stdin, msg[1])(arg)
    if len(msg) < 2:
        raise WireError("bad request")
    target = codec.decode(msg[1])
    if id(target) not in codec.ids:
        raise PermissionError("only objects the tests passed to the solution can be used")
    if kind == "call" and len(msg) == 4:
        args, kwargs = codec.decode(msg[2]), codec.decode(msg[3])
        if type(args) is not list or type(kwargs) is not dict or not all(type(k) is str for k in kwargs):
            raise WireError("bad call")
        return target(*args, **kwargs)
    if kind in ("getattr", "setattr") and len(msg) >= 3:
        name = msg[2]
        if type(name) is not str or name.startswith("_") or isinstance(target, _OPAQUE):
            raise AttributeError(f"attribute {str(name)[:40]!r} is not available to the solution")
        if kind == "getattr":
            return getattr(target, name)
        if len(msg) == 4 and (type(target).__module__ == "test_solution" or type(target) is types.SimpleNamespace):
            setattr(target, name, codec.decode(msg[3]))
            return None
        raise AttributeError(f"cannot set {name!r} on a {type(target).__name__}")
    if kind == "op" and len(msg) == 4 and type(msg[2]) is str and msg[2] in _OPS:
        args = codec.decode(msg[3])
        if type(args) is not list:
            raise WireError("bad op")
        op: Any = _OPS[msg[2]]
        return op(target, *args)
    raise WireError("unknown request")


def _describe(obj: Any) -> str:
    return "call" if callable(obj) else "obj"


# ----------------------------------------------------------------------- stand-ins for handles
_EXC_CLASSES: set[type] = set()


def _exception_class(name: str, base_name: str) -> type:
    base = getattr(builtins, base_name, None)
    if not (isinstance(base, type) and issubclass(base, Exception)) or base_name.startswith("_"):
        base = Exception  # SystemExit, KeyboardInterrupt...: a plain error here
    cls = type(name if name.isidentifier() else "SolutionError", (base,), {"__module__": "solution"})
    return cls


def _oid(obj: Any) -> list[Any]:
    ref: list[Any] = _peer().codec.encode(obj)
    return ref


def _remote_op(name: str, obj: Any, *args: Any) -> Any:
    enc = _peer().codec.encode
    return _peer().request(["op", enc(obj), name, enc(list(args))])


def _binary(name: str) -> Any:
    def op(self: Any, other: Any) -> Any:
        if not isinstance(other, RemoteObject):
            return NotImplemented  # decided here: a handle never equals plain data
        return _remote_op(name, self, other)

    op.__name__ = f"__{name}__"
    return op


def _unary(name: str, result_type: type | None = None) -> Any:
    def op(self: Any, *args: Any) -> Any:
        value = _remote_op(name, self, *args)
        if result_type is not None and type(value) is not result_type:
            raise TypeError(f"{name}() of a solution object returned {type(value).__name__}")
        return value

    op.__name__ = f"__{name}__"
    return op


class RemoteMeta(type):
    """Metaclass of the stand-ins for the solution's classes: calling one builds a remote object."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return _peer().call(cls, args, kwargs)

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _peer().request(["getattr", _oid(cls), name])


class RemoteObject(metaclass=RemoteMeta):
    """A handle to an object in the solution process."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _peer().request(["getattr", _oid(self), name])

    def __setattr__(self, name: str, value: Any) -> None:
        enc = _peer().codec.encode
        _peer().request(["setattr", enc(self), name, enc(value)])

    def __delattr__(self, name: str) -> None:
        _peer().request(["delattr", _oid(self), name])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _peer().call(self, args, kwargs)

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: Any) -> Any:
        return self

    # The object's own protocols run in the solution process (results type-checked);
    # comparisons and arithmetic only against another handle (see the module docstring).
    __len__ = _unary("len", int)
    __bool__ = _unary("bool", bool)
    __str__ = _unary("str", str)
    __repr__ = _unary("repr", str)
    __hash__ = _unary("hash", int)
    __contains__ = _unary("contains", bool)


for _name in ("iter", "next", "getitem", "setitem", "delitem"):
    setattr(RemoteObject, f"__{_name}__", _unary(_name))
for _name in ("eq", "ne", "lt", "le", "gt", "ge", "add", "sub", "mul"):
    setattr(RemoteObject, f"__{_name}__", _binary(_name))


class RemoteFunction(RemoteObject):
    """A handle to a function of the solution."""


def _make_proxy(oid: int, desc: Any) -> Any:
    if type(desc) is not list or not desc or type(desc[0]) is not str:
        raise WireError("bad description")
    kind = desc[0]
    name = desc[1] if len(desc) > 1 and type(desc[1]) is str and desc[1].isidentifier() else "solution_object"
    if kind == "func":
        return object.__new__(RemoteFunction)
    if kind == "class":
        return RemoteMeta(name, (RemoteObject,), {"__module__": "solution", "__qualname__": name})
    if kind == "exc" and len(desc) == 3 and type(desc[2]) is str:
        cls = _exception_class(name, desc[2])
        _EXC_CLASSES.add(cls)
        return cls
    if kind == "obj" and len(desc) == 2:
        cls = _peer().codec.decode(desc[1])
        if not (isinstance(cls, RemoteMeta)):
            cls = RemoteObject
        return object.__new__(cls)  # type: ignore[arg-type]
    raise WireError("bad description")


def contains_handles(value: Any, depth: int = 0) -> str | None:
    """The class name of a handle found in a decoded value (HumanEval answers are plain data)."""
    if isinstance(value, RemoteObject) or type(value) in _EXC_CLASSES or isinstance(value, RemoteMeta):
        return type(value).__name__
    if depth < 50:
        items: Any = ()
        if type(value) in (list, tuple, set, frozenset):
            items = value
        elif type(value) is dict:
            items = [*value.keys(), *value.values()]
        for item in items:
            found = contains_handles(item, depth + 1)
            if found:
                return found
    return None
