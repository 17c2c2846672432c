"""How an entry point's process ends, and whether a process that a record names still runs.

A finished training or evaluation leaves without the interpreter's teardown (torch, Lightning
and MLflow freed module by module, a CUDA build of torch unloading its libraries), which costs
seconds of every pipeline stage for nothing. ``exit_now`` leaves the ordinary way, ``sys.exit``:
the interpreter stops the thread pools' idle workers, waits for the other threads and runs the
exit handlers (MLflow's and logging's flushes, temporary folders), in the reverse order of their
registration. The last of them is the one this module registers when it is imported, before the
libraries are: it flushes logging and the standard streams and ends the process with ``os._exit``,
only when ``exit_now`` asked for it (every other exit is the interpreter's ordinary one).

``identity`` names this process (host, pid, start time) for a record; ``alive`` answers whether
the process a record names still runs.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
from pathlib import Path

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


# ---------------------------------------------------------------- is a recorded process still alive
# One owner for the question, asked of a checkpoint's writer (a resume refuses one still alive), of
# an MLflow run's process (the next run marks a dead one KILLED), of a search's lost trial (its job
# is continued only once gone) and of a service's PID file. A pid alone does not name a process:
# once it exits, its pid can be given to another one; the start time tells them apart.


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) from Linux's /proc/<pid>/stat (fields 3 and
    22, counted after the command's name, which may hold spaces); None where it cannot be read."""
    try:
        after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return after_name[0], after_name[19]
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot): with the pid it names one process.
    None where unknown (no /proc, or no such process)."""
    stat = _stat(pid)
    return stat[1] if stat else None


def identity() -> dict:
    """This process, as a record names it: host name, pid and start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": start_time(os.getpid())}


def alive(pid: int, started: str | None = None) -> bool:
    """Process ``pid`` of this host runs (a zombie waiting for its parent counts as gone) and, when
    ``started`` is given and the start time can be read, it is the process that started then (not
    another one given the same pid later)."""
    if type(pid) is not int or pid <= 0:  # os.kill(0 or -n) would signal a whole process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    stat = _stat(pid)
    if stat is None:
        return True  # no /proc to tell more: the signal found it
    state, since = stat
    return state not in ("Z", "X") and not (started and since != str(started))
