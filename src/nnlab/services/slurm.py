"""A single-node Slurm on 127.0.0.1, from Debian's packages, with all its state in one folder.

``python -m nnlab.cluster up|down|status`` (``make cluster-up``) drives it. Five daemons, each
started in the foreground with a PID file (nnlab.services.process), in this order:

munge      ``munged`` on its own socket (``<dir>/munge/munge.socket``) with its own key: Slurm's
           authentication, apart from any system munge
mariadb    ``mariadbd`` on a loopback port, the accounting database (``slurm_acct_db``)
slurmdbd   Slurm's accounting daemon: ``sacct`` lists finished jobs with their states
slurmctld  the controller
slurmd     the one compute node, advertising the machine's cores and memory (``slurmd -C``)

Every daemon listens on 127.0.0.1 on a port apart from Slurm's defaults (6817-6819), so a system
Slurm on the same machine is not disturbed. ``<dir>/env`` exports ``SLURM_CONF``: after
``source .cluster/env``, ``sinfo``, ``sbatch``, ``srun``, ``squeue`` and ``sacct`` talk to this
cluster. The daemons run as the calling user (root on a CI machine; another user can run jobs
only as themselves).
"""

from __future__ import annotations

import getpass
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from nnlab.config.paths import exclusive_lock
from nnlab.services.process import PidFile, log_hint, spawn, wait_until
from nnlab.services.settings import (
    ENV_FILE,
    HOST,
    ServiceError,
    ServiceFolder,
    free_port,
    port_in_use,
    read_env_file,
)

CLUSTER_NAME = "nnlab"
PARTITION = "nnlab"
DATABASE = "slurm_acct_db"
DB_USER = "slurm"
# Slurm's defaults are 6817 (slurmctld), 6818 (slurmd), 6819 (slurmdbd); MariaDB's is 3306.
DEFAULT_PORTS = {
    "NNLAB_SLURMCTLD_PORT": 16817,
    "NNLAB_SLURMD_PORT": 16818,
    "NNLAB_SLURMDBD_PORT": 16819,
    "NNLAB_CLUSTER_DB_PORT": 13306,
}
PACKAGES = {
    "munged": "munge",
    "munge": "munge",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "mariadb": "mariadb-client",
    "slurmdbd": "slurmdbd",
    "slurmctld": "slurm-wlm",
    "slurmd": "slurm-wlm",
    "sinfo": "slurm-client",
    "sacctmgr": "slurm-client",
    "scontrol": "slurm-client",
    "squeue": "slurm-client",
    "scancel": "slurm-client",
}
START_TIMEOUT = 60
CRED_EXPIRE = 10
IDLE_TIMEOUT = 60


@dataclass
class Cluster(ServiceFolder):
    """The folder, ports and names of one project's cluster, kept in ``<dir>/env``."""

    dir: Path
    ctld_port: int = DEFAULT_PORTS["NNLAB_SLURMCTLD_PORT"]
    slurmd_port: int = DEFAULT_PORTS["NNLAB_SLURMD_PORT"]
    dbd_port: int = DEFAULT_PORTS["NNLAB_SLURMDBD_PORT"]
    db_port: int = DEFAULT_PORTS["NNLAB_CLUSTER_DB_PORT"]

    # ---- places -----------------------------------------------------------------------------
    @property
    def etc(self) -> Path:
        return self.dir / "etc"

    @property
    def conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.dir / "munge" / "munge.socket"

    @property
    def db_socket(self) -> Path:
        return self.dir / "mariadb" / "mariadb.sock"

    @property
    def node(self) -> str:
        return socket.gethostname().split(".")[0]

    def ports(self) -> dict[str, int]:
        return {
            "slurmctld": self.ctld_port,
            "slurmd": self.slurmd_port,
            "slurmdbd": self.dbd_port,
            "mariadb": self.db_port,
        }

    def client_env(self) -> dict[str, str]:
        """What ``.cluster/env`` exports: Slurm's clients need only ``SLURM_CONF`` (the munge
        socket and the ports are in slurm.conf)."""
        return {
            "SLURM_CONF": str(self.conf),
            "NNLAB_CLUSTER_DIR": str(self.dir),
            **{name: str(port) for name, port in zip(DEFAULT_PORTS, self.ports().values())},
        }

    def daemon_env(self) -> dict[str, str]:
        path = os.environ.get("PATH", "")
        return {"PATH": f"{path}:/usr/sbin:/sbin", "SLURM_CONF": str(self.conf), "HOME": str(self.dir), "LANG": "C"}

    # ---- the env file ------------------------------------------------------------------------
    def write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "# The project's single-node Slurm, written by `make cluster-up` (python -m nnlab.cluster up).",
            "# Use it with:  source .cluster/env   (then sinfo, sbatch, srun, squeue, sacct)",
            *(f"export {key}={shlex.quote(value)}" for key, value in self.client_env().items()),
        ]
        tmp = self.env_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.env_file)

    @classmethod
    def load(cls, folder: Path) -> Cluster:
        """The cluster in ``folder/env``, or a new one on the default ports (each overridable by
        the environment variable of the same name)."""
        folder = Path(folder).absolute()
        values = read_env_file(folder / ENV_FILE) if (folder / ENV_FILE).exists() else dict(os.environ)
        try:
            ports = [int(values.get(name) or default) for name, default in DEFAULT_PORTS.items()]
        except ValueError as exc:
            raise ServiceError("settings", f"{folder / ENV_FILE}: a port is not a number ({exc})") from None
        return cls(folder, *ports)

    @classmethod
    def with_free_ports(cls, folder: Path) -> Cluster:
        """A new cluster on ports that are free now (what the tests use)."""
        chosen: set[int] = set()
        while len(chosen) < len(DEFAULT_PORTS):
            chosen.add(free_port())
        return cls(Path(folder).absolute(), *sorted(chosen))


# ---- programs ---------------------------------------------------------------------------------
def program(name: str) -> str:
    """The path of a Slurm, munge or MariaDB program; one line naming the package when missing."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if not found:
        package = PACKAGES.get(name, name)
        raise ServiceError(name, f"program not found (Debian package {package}: apt-get install {package})")
    return found


def run(cluster: Cluster, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    """A client command against this cluster; ServiceError with its message when it fails."""
    done = subprocess.run(
        [program(argv[0]), *argv[1:]], capture_output=True, text=True, env=cluster.daemon_env(), timeout=timeout
    )
    if check and done.returncode != 0:
        message = " ".join((done.stderr or done.stdout).split()) or f"exit status {done.returncode}"
        raise ServiceError(argv[0], message)
    return done


def node_hardware() -> dict[str, str]:
    """What ``slurmd -C`` finds on this machine: CPUs, sockets, cores, threads, RealMemory (MB)."""
    done = subprocess.run([program("slurmd"), "-C"], capture_output=True, text=True, timeout=30)
    first = done.stdout.splitlines()[0] if done.stdout else ""
    fields = dict(word.split("=", 1) for word in first.split() if "=" in word)
    if "CPUs" not in fields or "RealMemory" not in fields:
        raise ServiceError("slurmd", f"`slurmd -C` did not describe this machine: {first or done.stderr.strip()}")
    fields.pop("NodeName", None)
    return fields


# ---- configuration files ----------------------------------------------------------------------
def slurm_conf(cluster: Cluster, hardware: dict[str, str]) -> str:
    d, user = cluster.dir, getpass.getuser()
    node_spec = " ".join(f"{key}={value}" for key, value in hardware.items())
    return f"""# Written by python -m nnlab.cluster up: a single-node Slurm on 127.0.0.1, state in {d}.
ClusterName={CLUSTER_NAME}
SlurmctldHost={cluster.node}({HOST})
SlurmctldPort={cluster.ctld_port}
SlurmdPort={cluster.slurmd_port}
# Bind to the node's address (127.0.0.1), not to every interface.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a step's credential lifetime, and how long a requeued job waits before it
# starts again (120 s by default).
AuthInfo=socket={cluster.munge_socket},cred_expire={CRED_EXPIRE}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/logs/slurmctld.log
SlurmdLogFile={d}/logs/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
KillWait=10
MinJobAge=300
# Accounting: slurmdbd on MariaDB (sacct), no per-process sampling.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost={HOST}
AccountingStoragePort={cluster.dbd_port}
AccountingStoragePass={cluster.munge_socket}
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName={cluster.node} NodeAddr={HOST} NodeHostname={cluster.node} {node_spec} State=UNKNOWN
PartitionName={PARTITION} Nodes={cluster.node} Default=YES MaxTime=INFINITE State=UP
"""


def slurmdbd_conf(cluster: Cluster, password: str) -> str:
    d = cluster.dir
    return f"""# Written by python -m nnlab.cluster up: Slurm's accounting daemon on the project's MariaDB.
AuthType=auth/munge
AuthInfo=socket={cluster.munge_socket}
DbdAddr={HOST}
DbdHost=localhost
# Bind to the host's own address, not to every interface.
CommunicationParameters=NoInAddrAny
DbdPort={cluster.dbd_port}
SlurmUser={getpass.getuser()}
PidFile={d}/run/slurmdbd.pid
LogFile={d}/logs/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost={HOST}
StoragePort={cluster.db_port}
StorageUser={DB_USER}
StoragePass={password}
StorageLoc={DATABASE}
"""


def db_password(cluster: Cluster) -> str:
    """The accounting database's password, made once and kept in ``etc/db.secret`` (mode 600)."""
    path = cluster.etc / "db.secret"
    if not path.exists():
        cluster.etc.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


def write_configs(cluster: Cluster) -> None:
    """slurm.conf and slurmdbd.conf (mode 600: it holds the database password), every folder
    they name. Rewritten at each ``up``: the ports and the hardware are those of now."""
    for sub in ("etc", "state", "spool", "run", "logs", "pids", "munge", "mariadb"):
        (cluster.dir / sub).mkdir(parents=True, exist_ok=True)
    (cluster.dir / "munge").chmod(0o755)  # clients reach the socket; the key inside is 0400
    cluster.conf.write_text(slurm_conf(cluster, node_hardware()))
    dbd = cluster.etc / "slurmdbd.conf"
    dbd.touch(mode=0o600)
    dbd.chmod(0o600)
    dbd.write_text(slurmdbd_conf(cluster, db_password(cluster)))


# ---- the daemons ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Daemon:
    name: str
    port: str | None  # the Cluster attribute of its port

    def pid_file(self, cluster: Cluster) -> PidFile:
        marker = str(cluster.dir) if self.name in ("munge", "mariadb") else self.name
        return PidFile(cluster.pids, self.name, marker)

    def log(self, cluster: Cluster) -> Path:
        return cluster.logs / f"{self.name}.log"


MUNGE, MARIADB, SLURMDBD, SLURMCTLD, SLURMD = (
    Daemon("munge", None),
    Daemon("mariadb", "db_port"),
    Daemon("slurmdbd", "dbd_port"),
    Daemon("slurmctld", "ctld_port"),
    Daemon("slurmd", "slurmd_port"),
)
DAEMONS = (MUNGE, MARIADB, SLURMDBD, SLURMCTLD, SLURMD)


def munge_answers(cluster: Cluster) -> bool:
    cred = subprocess.run(
        [program("munge"), "-n", "-S", str(cluster.munge_socket)], capture_output=True, text=True, timeout=10
    )
    return cred.returncode == 0


def mariadb_sql(cluster: Cluster, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [program("mariadb"), f"--socket={cluster.db_socket}", "--user=root", "-N", "-e", sql],
        capture_output=True,
        text=True,
        timeout=30,
    )


def mariadb_answers(cluster: Cluster) -> bool:
    return cluster.db_socket.exists() and mariadb_sql(cluster, "SELECT 1").returncode == 0


def dbd_answers(cluster: Cluster) -> bool:
    return run(cluster, "sacctmgr", "-n", "-P", "list", "cluster", check=False, timeout=15).returncode == 0


def ctld_answers(cluster: Cluster) -> bool:
    done = run(cluster, "scontrol", "ping", check=False, timeout=15)
    return done.returncode == 0 and "UP" in done.stdout


def node_state(cluster: Cluster) -> str:
    """The node's state as sinfo writes it (idle, mix, alloc, down*, drain, ...), '' if unknown."""
    done = run(cluster, "sinfo", "-h", "-N", "-n", cluster.node, "-o", "%t", check=False, timeout=15)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""


def argv(daemon: Daemon, cluster: Cluster) -> list[str]:
    d = cluster.dir
    if daemon is MUNGE:
        return [
            program("munged"),
            "--foreground",
            "--force",  # pytest's and CI's folders may be laxer than munged's own checks
            f"--socket={cluster.munge_socket}",
            f"--key-file={d / 'munge' / 'munge.key'}",
            f"--pid-file={d / 'run' / 'munged.pid'}",
            f"--log-file={MUNGE.log(cluster)}",
            f"--seed-file={d / 'munge' / 'munged.seed'}",
        ]
    if daemon is MARIADB:
        user = ["--user=root"] if os.geteuid() == 0 else []
        return [
            program("mariadbd"),
            "--no-defaults",
            f"--datadir={d / 'mariadb' / 'data'}",
            f"--socket={cluster.db_socket}",
            f"--port={cluster.db_port}",
            f"--bind-address={HOST}",
            f"--pid-file={d / 'run' / 'mariadb.pid'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            *user,
        ]
    # -D: foreground (process.spawn keeps its PID); -i: a damaged saved state is not fatal
    extra = {"slurmd": ["-N", cluster.node], "slurmctld": ["-i"]}.get(daemon.name, [])
    return [program(daemon.name), "-D", *extra]


def ready_check(daemon: Daemon, cluster: Cluster):
    return {
        "munge": munge_answers,
        "mariadb": mariadb_answers,
        "slurmdbd": dbd_answers,
        "slurmctld": ctld_answers,
        "slurmd": lambda c: node_state(c).rstrip("*~#!%$@^-") not in ("", "unk", "down"),
    }[daemon.name]


def prepare(daemon: Daemon, cluster: Cluster) -> None:
    """What a daemon needs before its first start: munge's key, MariaDB's data folder."""
    if daemon is MUNGE:
        key = cluster.dir / "munge" / "munge.key"
        if not key.exists():
            key.touch(mode=0o400)
            key.chmod(0o600)
            key.write_bytes(secrets.token_bytes(1024))
            key.chmod(0o400)
    elif daemon is MARIADB:
        data = cluster.dir / "mariadb" / "data"
        if not (data / "mysql").is_dir():
            user = ["--user=root"] if os.geteuid() == 0 else []
            done = subprocess.run(
                [program("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--skip-test-db", *user],
                capture_output=True,
                text=True,
                timeout=180,
            )
            if done.returncode != 0:
                log = MARIADB.log(cluster)
                log.write_text(done.stdout + done.stderr)
                shutil.rmtree(data, ignore_errors=True)
                raise ServiceError("mariadb", f"mariadb-install-db failed{log_hint(log)}")


def after_start(daemon: Daemon, cluster: Cluster) -> None:
    """The accounting database and its user (MariaDB); the cluster's record (slurmdbd)."""
    if daemon is MARIADB:
        password = db_password(cluster).replace("'", "''")
        sql = (
            f"CREATE DATABASE IF NOT EXISTS {DATABASE}; "
            f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
            f"ALTER USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
            f"GRANT ALL ON {DATABASE}.* TO '{DB_USER}'@'127.0.0.1'; FLUSH PRIVILEGES;"
        )
        done = mariadb_sql(cluster, sql)
        if done.returncode != 0:
            raise ServiceError("mariadb", f"cannot create the accounting database: {' '.join(done.stderr.split())}")
    elif daemon is SLURMDBD:
        listed = run(cluster, "sacctmgr", "-n", "-P", "list", "cluster", "format=cluster").stdout.split()
        if CLUSTER_NAME not in listed:
            run(cluster, "sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)


def check_ports(cluster: Cluster) -> None:
    """A stopped daemon's port must be free: another program on it is named before anything starts."""
    for daemon in DAEMONS:
        port = getattr(cluster, daemon.port) if daemon.port else None
        if port is not None and daemon.pid_file(cluster).pid() is None and port_in_use(port):
            raise ServiceError(
                daemon.name, f"port {port} is in use by another program; stop it or change it in {cluster.env_file}"
            )


def start(daemon: Daemon, cluster: Cluster) -> str:
    pids = daemon.pid_file(cluster)
    log = daemon.log(cluster)
    if pids.pid() is None:
        prepare(daemon, cluster)
        proc = spawn(argv(daemon, cluster), log, env=cluster.daemon_env(), cwd=cluster.dir)
        pids.write(proc.pid)
        try:
            wait_until(daemon.name, lambda: ready_check(daemon, cluster)(cluster), START_TIMEOUT, proc, log)
        except ServiceError:
            pids.stop(timeout=10)
            raise
    elif daemon is not SLURMD and not ready_check(daemon, cluster)(cluster):
        raise ServiceError(daemon.name, f"running (pid {pids.pid()}) but does not answer{log_hint(log)}")
    after_start(daemon, cluster)
    return status_line(daemon, cluster)


def wait_idle(cluster: Cluster, timeout: float = IDLE_TIMEOUT) -> str:
    """Until sinfo shows the node idle (or busy with jobs); a drained or down node is resumed
    once (a node that was stopped with jobs on it comes back drained)."""
    deadline, resumed = time.monotonic() + timeout, False
    state = ""
    while time.monotonic() < deadline:
        state = node_state(cluster)
        if state in ("idle", "mix", "alloc", "comp"):
            return state
        if not resumed and state.rstrip("*~#!%$@^-") in ("drain", "drng", "down"):
            run(cluster, "scontrol", "update", f"nodename={cluster.node}", "state=resume", check=False)
            resumed = True
        if SLURMD.pid_file(cluster).pid() is None:
            raise ServiceError("slurmd", f"exited while its node came up{log_hint(SLURMD.log(cluster))}")
        time.sleep(0.5)
    raise ServiceError(
        "slurmd",
        f"node {cluster.node} is {state or 'unknown'}, not idle, after {timeout:.0f} s{log_hint(SLURMD.log(cluster))}",
    )


def locked(folder: Path) -> AbstractContextManager[None]:
    """One ``up`` or ``down`` at a time per cluster folder."""
    return exclusive_lock(folder / ".lock")


def up(folder: Path) -> list[str]:
    """Start what is not running, in order, and wait until the node is idle; idempotent."""
    cluster = Cluster.load(folder)
    for name in ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sinfo"):
        program(name)
    with locked(cluster.dir):
        cluster.write()
        if all(d.pid_file(cluster).pid() is None for d in DAEMONS):
            write_configs(cluster)
        check_ports(cluster)
        lines = [start(daemon, cluster) for daemon in DAEMONS]
        state = wait_idle(cluster)
        lines.append(f"node {cluster.node}: {state}, partition {PARTITION}")
        return lines


def cancel_jobs(cluster: Cluster) -> int:
    """Cancel the cluster's jobs and wait until they have ended; how many there were."""
    if SLURMCTLD.pid_file(cluster).pid() is None:
        return 0
    listed = run(cluster, "squeue", "-h", "-o", "%i", check=False).stdout.split()
    if listed:
        run(cluster, "scancel", "--full", *listed, check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and run(cluster, "squeue", "-h", "-o", "%i", check=False).stdout.split():
            time.sleep(0.5)
    return len(listed)


def down(folder: Path) -> list[str]:
    """Cancel the jobs, then stop the daemons by PID file in reverse order."""
    cluster = Cluster.load(folder)
    if not cluster.env_file.exists():
        return [f"{d.name}: not running" for d in reversed(DAEMONS)]
    with locked(cluster.dir):
        lines = []
        cancelled = cancel_jobs(cluster)
        if cancelled:
            lines.append(f"jobs: {cancelled} cancelled")
        for daemon in reversed(DAEMONS):
            stopped = daemon.pid_file(cluster).stop(timeout=30)
            lines.append(f"{daemon.name}: {'stopped' if stopped else 'not running'}")
        return lines


def status_line(daemon: Daemon, cluster: Cluster) -> str:
    pid = daemon.pid_file(cluster).pid()
    if pid is None:
        return f"{daemon.name}: stopped (log: {daemon.log(cluster)})"
    if not ready_check(daemon, cluster)(cluster):
        return f"{daemon.name}: running (pid {pid}) but does not answer{log_hint(daemon.log(cluster))}"
    where = f"on {HOST}:{getattr(cluster, daemon.port)}" if daemon.port else f"on {cluster.munge_socket}"
    return f"{daemon.name}: running (pid {pid}) {where}"


def status(folder: Path) -> tuple[list[str], bool]:
    """One line per daemon and one for the node; whether all run and the node takes jobs."""
    cluster = Cluster.load(folder)
    if not cluster.env_file.exists():
        return [f"{d.name}: stopped (no {cluster.env_file}: run make cluster-up)" for d in DAEMONS], False
    lines = [status_line(daemon, cluster) for daemon in DAEMONS]
    ok = all(": running (pid " in line and "does not answer" not in line for line in lines)
    if ok:
        state = node_state(cluster)
        lines.append(f"node {cluster.node}: {state or 'unknown'}, partition {PARTITION}")
        ok = state.rstrip("*~#!%$@^-") in ("idle", "mix", "alloc", "comp")
    return lines, ok
