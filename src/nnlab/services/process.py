"""A service's processes: started in their own session with a PID file, waited for, stopped.

``down`` stops exactly what ``up`` started: the PID in ``<dir>/pids/<service>.pid``, and only
when that process's command line still names the service's marker (a PID reused by another
program after a reboot is left alone).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from nnlab.config.process import alive  # running; a zombie waiting for its parent counts as gone
from nnlab.services.settings import ServiceError


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class PidFile:
    def __init__(self, folder: Path, service: str, marker: str):
        self.path, self.service, self.marker = Path(folder) / f"{service}.pid", service, marker

    def pid(self) -> int | None:
        """The recorded PID if that process is alive and is ours; a stale file is removed."""
        try:
            pid = int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if alive(pid) and self.marker in cmdline(pid):
            return pid
        self.path.unlink(missing_ok=True)
        return None

    def write(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{pid}\n")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30, group: bool = True) -> bool:
        """Signal the recorded process (its process group when ``group``), wait until it is gone
        (SIGKILL after ``timeout``); False when nothing of ours was running."""
        pid = self.pid()
        if pid is None:
            return False
        send = os.killpg if group else os.kill
        with contextlib.suppress(ProcessLookupError):
            send(pid, sig)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                send(pid, signal.SIGKILL)
            while alive(pid) and time.monotonic() < deadline + 10:
                time.sleep(0.1)
        self.path.unlink(missing_ok=True)
        return True


def spawn(
    argv: Sequence[str], log: Path, env: dict[str, str], cwd: Path | str = "/", user: str | None = None
) -> subprocess.Popen:
    """Start ``argv`` detached (its own session, so it outlives this command and ``down`` can
    stop its whole group), output appended to ``log``; as ``user`` when given (root only)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        kwargs = {}
        if user:
            kwargs = {"user": user, "group": user, "extra_groups": [], "umask": 0o077}
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cwd),
            start_new_session=True,
            **kwargs,
        )


def wait_until(
    service: str,
    ready: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    interval: float = 0.2,
) -> None:
    """Poll ``ready()`` until it is true; ServiceError (one line, with the log's telling line)
    when the process exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            raise ServiceError(service, f"exited with status {proc.returncode} while starting{log_hint(log)}")
        time.sleep(interval)
    raise ServiceError(service, f"did not answer within {timeout:.0f} s{log_hint(log)}")


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit): ")
ERROR_WORDS = ("FATAL", "ERROR", "Error", "error", "Exception", "failed", "refused", "denied")


def log_hint(log: Path | None) -> str:
    """`` (<telling line of the log>; log: <path>)``: the last line that names an error."""
    if log is None:
        return ""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f" (log: {log})"
    recent = lines[-200:]
    raised = [line for line in recent if EXCEPTION_LINE.match(line)]  # the exception, if one ended it
    telling = raised[-1] if raised else next((ln for ln in reversed(recent) if any(w in ln for w in ERROR_WORDS)), "")
    telling = telling if len(telling) <= 300 else telling[:297] + "..."
    return f" ({telling}; log: {log})" if telling else f" (log: {log})"
