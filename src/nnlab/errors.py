"""nnlab's one policy for errors a person reads.

Every error that a user can act on (a bad config value, data that is missing or damaged, a
tracking store that cannot be used, a training that diverged, a checkpoint nnlab refuses) is an
``NnlabError``: its message is one line naming what was wrong and what is allowed or what to run.
Each entry point catches ``NnlabError`` once and leaves through ``fail``: ``<prog>: error: <line>``
on stderr, exit code ``exit_code``. Anything else is a bug, and keeps its traceback.

The modules that raise them define their subclasses (ConfigError in nnlab.config.schema, DataError
in nnlab.data.idx, ...), beside the code that knows the rule; the remedies a message names are here.
"""

from __future__ import annotations

import sys
from typing import NoReturn

# What to run when a prepared data folder is missing or damaged.
MNIST_REPAIR = "run `dvc checkout data/mnist` or `dvc repro -f prepare_mnist`"
BLOBS_REPAIR = "run `dvc repro prepare_blobs`"


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


class NnlabError(Exception):
    """An error a person can act on. ``label`` starts the printed line (``config: ``);
    ``exit_code``: 2 for bad input a person typed, 1 for a failure."""

    label = ""
    exit_code = 1

    def line(self) -> str:
        """What an entry point prints: the label and the message, as one line."""
        return f"{self.label}{joined_lines(self) or type(self).__name__}"


class TrackingError(NnlabError, RuntimeError):
    """The tracking store cannot be used (one-line message naming the URI and the fix). Here, not
    in nnlab.tracking, so that a stage can catch it without importing MLflow."""


class SearchError(NnlabError, ValueError):
    """A search setting that cannot work (one-line message: the key, what was wrong, what is allowed).
    Here, not in the sweeper plugin: Hydra executes the plugin's modules anew at every plugin scan,
    so a class defined there is a new class each time and ``except SearchError`` would miss it."""


class CheckpointError(NnlabError, ValueError):
    """A checkpoint that nnlab did not write, is damaged, or does not fit the experiment."""

    exit_code = 2


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    """``<prog>: error: <message>`` on stderr and exit (2: bad input, 1: failed, 130: interrupted)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def report(prog: str, exc: NnlabError) -> NoReturn:
    """Leave an entry point with ``exc``'s one line and exit code."""
    fail(prog, exc.line(), exc.exit_code)
