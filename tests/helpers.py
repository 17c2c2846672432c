"""Helpers the tests share (fixtures stay in conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from nnlab.benchmark.synthetic import synthetic_digits, write_idx_dir  # noqa: F401 (re-exported)

REPO = Path(__file__).resolve().parents[1]


def venv_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: this interpreter's bin/ first on PATH."""
    env = dict(os.environ)
    bin_dir = str(Path(os.sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def ctrl_c_raises() -> None:
    """``preexec_fn`` of a process a test presses Ctrl-C in: SIGINT back to its default, so that
    Python turns it into KeyboardInterrupt even when the tests run as a shell's background job
    (which inherits SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_module(module: str, *args: str, cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m <module> args...`` as a real process with the venv's environment."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        env=venv_env(**env),
        timeout=timeout,
        cwd=cwd,
    )
