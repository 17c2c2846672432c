"""How an entry point's process ends.

A finished training or evaluation leaves without the interpreter's teardown (torch, Lightning
and MLflow freed module by module, a CUDA build of torch unloading its libraries), which costs
seconds of every pipeline stage for nothing. ``exit_now`` leaves the ordinary way, ``sys.exit``:
the interpreter stops the thread pools' idle workers, waits for the other threads and runs the
exit handlers (MLflow's and logging's flushes, temporary folders), in the reverse order of their
registration. The last of them is the one this module registers when it is imported, before the
libraries are: it flushes logging and the standard streams and ends the process with ``os._exit``,
only when ``exit_now`` asked for it (every other exit is the interpreter's ordinary one).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys

_requested: list[int] = []  # the code exit_now was called with


def exit_now(code: int = 0) -> None:
    """End a process whose work is done and recorded: threads joined, exit handlers run, streams
    flushed, exit ``code``, no teardown of the loaded modules."""
    _requested.append(code)
    sys.exit(code)


def _leave_without_teardown() -> None:
    if not _requested:
        return
    logging.shutdown()  # its own exit handler may have been registered before this one
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or a pipe whose reader is gone
            stream.flush()
    os._exit(_requested[-1])


atexit.register(_leave_without_teardown)
