"""How an entry point's process ends."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading


def exit_now(code: int = 0) -> None:
    """End a process whose work is done and recorded without the interpreter's teardown: wait
    for its other threads, run the exit handlers (MLflow's and logging's flushes, temporary
    folders), flush the streams, leave. Tearing down torch, Lightning and MLflow module by module
    takes about 1.5 s on the 2-core machine and touches another 130 MB of memory (a CUDA build
    of torch unloading its libraries), in every pipeline stage, for nothing."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or a pipe whose reader is gone
            stream.flush()
    os._exit(code)
