"""Team services: ``python -m nnlab.team up|down|status`` (``make services-up`` ...).

up      start PostgreSQL, the S3 object store and the MLflow tracking server on 127.0.0.1 (those
        not running yet), wait until each answers, write .services/env; idempotent
down    stop what up started (by PID file), in reverse order
status  one line per service; exit status 0 when all run and answer, 3 otherwise

Exit status 1 and one line ``nnlab.team: error: <service>: <reason>`` when a service fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnlab.config.paths import find_root
from nnlab.errors import fail
from nnlab.services import stack
from nnlab.services.settings import ServiceError

PROG = "nnlab.team"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--dir", type=Path, help="the services folder (default: <project root>/.services)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = (args.dir or find_root() / ".services").absolute()
    try:
        if args.command == "up":
            lines = stack.up(folder)
            lines.append(f"env: {folder / 'env'} (source it to use the services)")
            ok = True
        elif args.command == "down":
            lines, ok = stack.down(folder), True
        else:
            lines, ok = stack.status(folder)
    except ServiceError as exc:
        fail(PROG, str(exc), code=1)
    except KeyboardInterrupt:
        fail(PROG, "interrupted", code=130)
    print("\n".join(lines))
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
