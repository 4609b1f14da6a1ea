"""Run one measurement in its own process and report its peak resident memory.

Every backend measurement and every export runs in a fresh ``spawn``-ed process, so that (a) the
peak RSS is that run's own (``ru_maxrss`` of a process never goes down, so measuring several runs in
one process would report the largest so far), (b) a run that crashes, is killed for memory, or
hangs is reported as such with a timeout instead of taking the whole benchmark down, and (c) one
backend's threads and caches cannot slow the next one.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any

from runtime_py.memory import peak_rss_bytes

_SPAWN = mp.get_context("spawn")


@dataclass
class IsolatedResult:
    """How one isolated run ended: ``status`` is "ok", "error" or "timeout"."""

    status: str
    value: Any
    error: str | None
    seconds: float
    peak_rss_bytes: int | None
    exitcode: int | None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("value")
        return data


def _child(target: str, kwargs: dict[str, Any], conn: Any) -> None:
    try:
        module_name, _, function_name = target.partition(":")
        function = getattr(importlib.import_module(module_name), function_name)
        value = function(**kwargs)
        conn.send(("ok", value, None, peak_rss_bytes()))
    except BaseException as exc:  # report everything, including SystemExit, to the parent
        lines = traceback.format_exception_only(type(exc), exc)
        conn.send(("error", None, "".join(lines).strip()[:2000], peak_rss_bytes()))
    finally:
        conn.close()


def run_isolated(target: str, kwargs: dict[str, Any] | None = None, timeout_s: float = 600.0) -> IsolatedResult:
    """Call ``module:function(**kwargs)`` in a fresh process; its return value must be picklable.

    The child is killed (only it: we started it) when it exceeds ``timeout_s``.
    """
    if ":" not in target:
        raise ValueError(f"target must be 'module:function', got {target!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    receive, send = _SPAWN.Pipe(duplex=False)
    process = _SPAWN.Process(target=_child, args=(target, dict(kwargs or {}), send), daemon=True)
    start = time.perf_counter()
    process.start()
    send.close()
    message = None
    try:
        if receive.poll(timeout_s):
            try:
                message = receive.recv()
            except EOFError:  # the child died without a word (killed, segfault)
                message = None
    finally:
        seconds = time.perf_counter() - start
        if message is None and process.is_alive():
            process.kill()
        process.join(30)
        receive.close()
    if message is None:
        if seconds >= timeout_s:
            return IsolatedResult("timeout", None, f"timed out after {timeout_s:.0f} s", seconds, None, process.exitcode)
        code = process.exitcode
        hint = " (killed: out of memory?)" if code == -9 else ""
        return IsolatedResult("error", None, f"the process exited with code {code}{hint} before reporting",
                              seconds, None, code)
    status, value, error, peak = message
    return IsolatedResult(status, value, error, seconds, peak, process.exitcode)
