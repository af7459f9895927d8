"""One persistent solver process per process: it runs jobs (a solve) that this process may end at any moment.

Why: a solver that ignores its interrupt callbacks for a while (HiGHS 1.x inside a sub-MIP or a restart: 30 s past
a 60 s limit on resnet18_cifar-m4) can only be stopped for sure by ending its process. ``milp.Milp.solve`` sends
each solve here and kills the process when the solve runs past its limit plus ``GRACE_S``; what the job sent
before (its progress records and incumbents) is the result.

Protocol (one ``multiprocessing`` pipe, "spawn" context: the parent may hold solver threads, a fork would inherit
them in an unusable state):
  parent -> child  ("job", fn, key, obj, args)   run ``fn(channel, obj, *args)``; ``obj`` is cached in the child
                                                 under ``key`` (None: the child has it already, see ``CACHE``)
                   ("import", names)             import these modules now (the start-up overlaps other work)
                   None                          exit
  child -> parent  ("msg", anything)             what ``channel.send`` sent, relayed to the parent's handler
                   ("done", value)               the job's return value
                   ("error", exception)          the job raised it (the child keeps serving)
and one shared integer the parent sets to ask the running job to stop (``channel.stopping()`` reads it; the job
decides how to stop, the parent kills it if it does not in time).

The child ignores SIGINT (Ctrl-C reaches the whole process group; the parent decides). It is daemonic, so it has
no children of its own, and it is killed when this process exits (``atexit``, and multiprocessing's own clean-up
of daemonic children in a child process; an orphan exits at its next read or write of the pipe). A daemonic process cannot start it: ``available()`` says so, and the
caller runs the job in-process.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import multiprocessing
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

GRACE_S = 1.0  # a job past its deadline by this much is killed
CACHE = 3  # objects (keys) the child keeps; the parent mirrors the same LRU to know what it need not resend
POLL_S = 0.2  # how often the parent asks its ``stop`` predicate while a job runs


class Killed(Exception):
    """The job did not end by its hard deadline (or the child died): the child was ended. ``asked``: the
    caller's ``stop`` had said stop (the job did not within ``GRACE_S`` of it)."""

    def __init__(self, why: str, asked: bool = False) -> None:
        super().__init__(why)
        self.why, self.asked = why, asked


class Channel:
    """The job's side: ``send`` a message to the parent, ``stopping()``: whether the parent asks it to stop."""

    def __init__(self, conn: Any, flag: Any) -> None:
        self._conn, self._flag = conn, flag

    def send(self, msg: Any) -> None:
        self._conn.send(("msg", msg))

    def stopping(self) -> bool:
        return bool(self._flag.value)


def _serve(conn: Any, flag: Any, preload: tuple[str, ...]) -> None:
    """(the child) Run jobs until told to exit or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _import(preload)
    cache: OrderedDict[Any, Any] = OrderedDict()
    chan = Channel(conn, flag)
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return
        if req is None:
            return
        if req[0] == "import":
            _import(req[1])
            continue
        _, fn, key, obj, args = req
        try:
            value = fn(chan, _cached(cache, key, obj), *args)
            reply: tuple[str, Any] = ("done", value)
        except BaseException as e:  # sent to the parent, which raises it
            reply = ("error", _picklable(e))
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


def _import(names: tuple[str, ...]) -> None:
    for n in names:
        with contextlib.suppress(ImportError):
            importlib.import_module(n)


def _cached(cache: OrderedDict, key: Any, obj: Any) -> Any:
    """(the child) A new object is stored under its key; None: the one stored under it."""
    if obj is not None:
        cache[key] = obj
    obj = cache[key]
    _touch(cache, key)
    return obj


def _touch(cache: OrderedDict, key: Any) -> None:
    """The LRU both sides keep, in step: ``key`` is the latest; the oldest beyond ``CACHE`` go."""
    cache.setdefault(key, None)
    cache.move_to_end(key)
    while len(cache) > CACHE:
        cache.popitem(last=False)


def _picklable(e: BaseException) -> BaseException:
    try:
        pickle.dumps(e)
        return e
    except Exception:
        return RuntimeError(f"in the solver process: {''.join(traceback.format_exception(e)).strip()}")


class Worker:
    """The parent's handle on the child (``get()``: this process's one worker)."""

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.flag = ctx.RawValue("i", 0)
        self.proc = ctx.Process(
            target=_serve, args=(child, self.flag, preload), daemon=True, name="poetc-solver"
        )
        self.proc.start()
        child.close()
        self.keys: OrderedDict[Any, None] = OrderedDict()  # the child's cache, mirrored

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.is_alive()

    def preload(self, names: tuple[str, ...]) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("import", tuple(names)))

    def run(
        self,
        fn: Callable[..., Any],
        key: Any,
        obj: Any,
        args: tuple,
        on_msg: Callable[[Any], None],
        stop: Callable[[], bool] | None,
        deadline: float,
    ) -> Any:
        """Run ``fn(channel, obj, *args)`` in the child; ``on_msg`` gets what it sends, as it comes. ``stop``
        is asked every ``POLL_S`` and after every message: True asks the job to stop (it then has ``GRACE_S``).
        At ``deadline`` (``time.perf_counter()``) + ``GRACE_S`` the child is killed and ``Killed`` raised; so it
        is on any exception here (Ctrl-C, a failing ``on_msg``), which is then raised. The job's own exception
        is raised as is."""
        self.flag.value = 0
        send = None if key in self.keys else obj
        _touch(self.keys, key)
        hard = deadline + GRACE_S
        try:
            reply = self._wait(("job", fn, key, send, args), on_msg, stop, hard)
        except Killed:
            raise
        except BaseException:  # Ctrl-C, or a failing on_msg or stop: the job may be running still
            self.kill()
            raise
        if reply[0] == "error":
            raise reply[1]
        return reply[1]

    def _wait(
        self, req: tuple, on_msg: Callable[[Any], None], stop: Callable[[], bool] | None, hard: float
    ) -> tuple[str, Any]:
        try:
            self.conn.send(req)
        except OSError:
            self.proc.join(0.5)
            code = self.proc.exitcode
            self.kill()
            raise Killed(f"its process died (exit code {code})") from None
        last_ask = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now >= hard:
                self.kill()
                if self.flag.value:
                    raise Killed(f"did not stop within {GRACE_S:g} s of being asked to", asked=True)
                raise Killed(f"did not stop within {GRACE_S:g} s of its time limit")
            wait = hard - now if stop is None or self.flag.value else min(hard - now, POLL_S)
            try:
                got = self.conn.recv() if self.conn.poll(max(0.0, wait)) else None
            except (EOFError, OSError):
                self.proc.join(0.5)
                code = self.proc.exitcode
                self.kill()
                raise Killed(f"its process died (exit code {code})") from None
            if got is not None:
                if got[0] != "msg":
                    return got
                on_msg(got[1])
            if stop is not None and not self.flag.value:
                now = time.perf_counter()
                if got is not None or now - last_ask >= POLL_S:
                    last_ask = now
                    if stop():
                        self.flag.value = 1
                        hard = min(hard, now + GRACE_S)

    def kill(self) -> None:
        global _worker
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.join(2.0)
        with contextlib.suppress(Exception):
            self.conn.close()
        if _worker is self:
            _worker = None


_worker: Worker | None = None
_lock = threading.Lock()
PRELOAD = ("numpy", "scipy.sparse", "highspy", "poetc.schedule.milp")


def available() -> bool:
    """Whether this process may have a worker: not inside a daemonic process (which may have no child)."""
    return not multiprocessing.current_process().daemon


def get() -> Worker:
    """This process's worker, started if there is none (or the last one was killed or died)."""
    global _worker
    if _worker is None or not _worker.alive():
        if _worker is not None:
            _worker.kill()
        _worker = Worker(PRELOAD)
    return _worker


def warm_up(more: tuple[str, ...] = ()) -> None:
    """Start the worker now (its start-up, about a second of imports, overlaps what the caller does next), and
    have it import ``more`` modules too. Nothing in a daemonic process, nor while another thread runs a job."""
    if not available() or not _lock.acquire(blocking=False):
        return
    try:
        w = get()
        if more:
            w.preload(more)
    finally:
        _lock.release()


def lock() -> threading.Lock:
    """Held while a job runs: one job at a time (another thread finding it held solves in-process)."""
    return _lock


@atexit.register
def _shut_down() -> None:
    """At exit: the worker is idle (or still importing, after a replacement): ended at once."""
    if _worker is not None:
        _worker.kill()
