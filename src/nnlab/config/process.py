"""How an entry point's process ends."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading


def exit_now(code: int = 0) -> None:
    """End a process whose work is done and recorded without the interpreter's teardown: first
    what the interpreter does first at exit (``_shutdown_threads``), then the exit handlers
    (MLflow's and logging's flushes, temporary folders), flush the streams, leave. Tearing down
    torch, Lightning and MLflow module by module takes about 1.5 s on the 2-core machine and
    touches another 130 MB of memory (a CUDA build of torch unloading its libraries), in every
    pipeline stage, for nothing."""
    _shutdown_threads()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or a pipe whose reader is gone
            stream.flush()
    os._exit(code)


def _shutdown_threads() -> None:
    """The interpreter's own first step at exit (``threading._shutdown``): tell the idle workers
    of thread pools to stop, then wait for every non-daemon thread. Joining the threads without the
    first part waits forever on a pool that is unreachable but not yet collected (MLflow's artifact
    repositories hold theirs in a reference cycle, and one downloads when a model is logged)."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None and threading.current_thread() is threading.main_thread():
        shutdown()
        return
    for thread in threading.enumerate():  # elsewhere: at least the threads that end by themselves
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
