"""The one policy for errors a person reads: one line, naming what was wrong and what is allowed."""

from __future__ import annotations

import sys
from typing import NoReturn


class TrackingError(RuntimeError):
    """The tracking store cannot be used (one-line message naming the URI and the fix). Here, not
    in nnlab.tracking, so that a stage can catch it without importing MLflow."""


def first_line(exc: BaseException | str) -> str:
    """The first non-empty line of an error (its type's name if it has no text)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def joined_lines(text: object) -> str:
    """``text`` as one line: its non-blank lines joined with ' | ', ends stripped."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def one_line(exc: BaseException) -> str:
    """A multi-line error (and its cause) joined into one line, without OmegaConf's key dumps."""
    parts = [str(exc)] + ([str(exc.__cause__)] if exc.__cause__ else [])
    lines = [line.strip() for part in parts for line in part.splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(("full_key", "object_type")))


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    """``<prog>: error: <message>`` on stderr and exit (2: bad input, 1: failed, 130: interrupted)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)
