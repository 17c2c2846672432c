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

import sys

from nnlab.services import cli, slurm

PROG = "nnlab.cluster"


def main(argv: list[str] | None = None) -> int:
    return cli.run(PROG, __doc__, slurm, ".cluster", "source it to use the cluster: sinfo, sbatch, srun, sacct", argv)


if __name__ == "__main__":
    sys.exit(main())
