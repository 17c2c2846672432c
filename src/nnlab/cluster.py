"""A single-node Slurm on loopback: ``python -m nnlab.cluster up|down|status`` (``make cluster-up`` ...).

up      start munge, MariaDB, slurmdbd, slurmctld and slurmd on 127.0.0.1 (those not running yet),
        wait until sinfo shows the node idle, write .cluster/env; idempotent
down    cancel the cluster's jobs, stop what up started (by PID file), in reverse order
status  one line per daemon and one for the node; exit status 0 when all run and the node is
        up, 3 otherwise

``source .cluster/env`` then points sinfo, sbatch, srun, squeue and sacct at it (docs/cluster.md).
Exit status 1 and one line ``nnlab.cluster: error: <daemon>: <reason>`` when something fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnlab.config.paths import find_root
from nnlab.errors import fail
from nnlab.services import slurm
from nnlab.services.settings import ServiceError

PROG = "nnlab.cluster"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--dir", type=Path, help="the cluster's folder (default: <project root>/.cluster)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = (args.dir or find_root() / ".cluster").absolute()
    try:
        if args.command == "up":
            lines = slurm.up(folder)
            lines.append(f"env: {folder / 'env'} (source it to use the cluster: sinfo, sbatch, srun, sacct)")
            ok = True
        elif args.command == "down":
            lines, ok = slurm.down(folder), True
        else:
            lines, ok = slurm.status(folder)
    except ServiceError as exc:
        fail(PROG, str(exc), code=1)
    except KeyboardInterrupt:
        fail(PROG, "interrupted", code=130)
    print("\n".join(lines))
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
