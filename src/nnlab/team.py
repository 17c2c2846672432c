"""Team services: ``python -m nnlab.team up|down|status`` (``make services-up`` ...).

up      start PostgreSQL, the S3 object store and the MLflow tracking server on 127.0.0.1 (those
        not running yet), wait until each answers, write .services/env; idempotent
down    stop what up started (by PID file), in reverse order
status  one line per service; exit status 0 when all run and answer, 3 otherwise

Exit status 1 and one line ``nnlab.team: error: <service>: <reason>`` when a service fails.
"""

from __future__ import annotations

import sys

from nnlab.services import cli, stack

PROG = "nnlab.team"


def main(argv: list[str] | None = None) -> int:
    return cli.run(PROG, __doc__, stack, ".services", "source it to use the services", argv)


if __name__ == "__main__":
    sys.exit(main())
