"""PostgreSQL 15 (Debian's ``postgresql-15``) with a project-local data directory.

PostgreSQL refuses to run as root, so a root caller runs ``initdb`` and ``postgres`` as the
unprivileged ``postgres`` system user (``NNLAB_PG_OS_USER`` names another); anyone else runs them
as themselves. That user must be able to reach the data directory: when a parent folder of the
project is closed to it (a checkout under /root, pytest's 0700 temporary folders), the data lives
in ``/var/tmp/nnlab-postgres-<hash>/`` (``NNLAB_PG_FALLBACK_DIR`` names another parent) and
``.services/postgres`` is a symlink to it. It listens on 127.0.0.1 only (no Unix socket) and
every connection needs the password (scram-sha-256).
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from nnlab.services.process import PidFile, spawn, wait_until
from nnlab.services.settings import DATABASES, HOST, PG_USER, ServiceError, Settings

NAME = "postgres"
START_TIMEOUT = 60


def bin_dir() -> Path:
    """The PostgreSQL binaries: ``NNLAB_PG_BIN``, else the newest /usr/lib/postgresql/<v>/bin."""
    if os.environ.get("NNLAB_PG_BIN"):
        return Path(os.environ["NNLAB_PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    raise ServiceError(NAME, "no PostgreSQL server found (apt-get install postgresql-15, or set NNLAB_PG_BIN)")


def os_user() -> str | None:
    """The user that runs the server: None (the caller) unless the caller is root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("NNLAB_PG_OS_USER", "postgres")
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(NAME, f"runs as an unprivileged user, and user {name!r} does not exist") from None
    return name


def as_user(argv: list[str], user: str | None, **kwargs) -> subprocess.CompletedProcess:
    extra = {"user": user, "group": user, "extra_groups": []} if user else {}
    return subprocess.run(argv, capture_output=True, text=True, cwd="/", **extra, **kwargs)


def reachable(folder: Path, user: str | None) -> bool:
    """Can ``user`` enter and write ``folder``?"""
    if user is None:
        return os.access(folder, os.W_OK | os.X_OK)
    return as_user(["test", "-w", str(folder), "-a", "-x", str(folder)], user).returncode == 0


def home(settings: Settings) -> Path:
    """``.services/postgres``: a folder owned by the server's user, or a link to one it can reach."""
    link = settings.dir / "postgres"
    if link.exists():
        return link
    user = os_user()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.mkdir(mode=0o700)
    if user:
        info = pwd.getpwnam(user)
        os.chown(link, info.pw_uid, info.pw_gid)
    if reachable(link, user):
        return link
    link.rmdir()
    base = Path(os.environ.get("NNLAB_PG_FALLBACK_DIR", "/var/tmp"))
    digest = hashlib.sha1(str(settings.dir.resolve()).encode()).hexdigest()[:12]
    target = base / f"nnlab-postgres-{digest}"
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    if user:
        os.chown(target, info.pw_uid, info.pw_gid)
    if not reachable(target, user):
        raise ServiceError(
            NAME, f"user {user} can reach neither {link} nor {target}; set NNLAB_PG_FALLBACK_DIR to a folder it can"
        )
    link.symlink_to(target, target_is_directory=True)
    return link


def data_dir(settings: Settings) -> Path:
    return home(settings).resolve() / "data"  # the real path: the link's folder may be closed to the user


def pid_file(settings: Settings) -> PidFile:
    return PidFile(settings.pids, NAME, f"-p {settings.pg_port}")


def connect(settings: Settings, database: str = "postgres", password: str | None = None, timeout: int = 5):
    import psycopg2

    return psycopg2.connect(
        host=HOST,
        port=settings.pg_port,
        user=PG_USER,
        password=settings.pg_password if password is None else password,
        dbname=database,
        connect_timeout=timeout,
    )


def check(settings: Settings, password: str | None = None, database: str = "postgres") -> None:
    """A login with the password; ServiceError naming what went wrong."""
    import psycopg2

    try:
        conn = connect(settings, database, password)
        conn.close()
    except psycopg2.Error as exc:
        reason = " ".join(str(exc).split())
        raise ServiceError(NAME, f"{HOST}:{settings.pg_port}: {reason}") from None


def _answers(settings: Settings) -> bool:
    """Accepting connections yet? A refused password is final, not a reason to wait."""
    try:
        check(settings)
        return True
    except ServiceError as exc:
        if "password authentication failed" in str(exc):
            raise
        return False


def init(settings: Settings, user: str | None) -> None:
    """``initdb`` with the superuser ``nnlab`` and its password (scram-sha-256 everywhere)."""
    data = data_dir(settings)
    pwfile = data.parent / "pwfile"
    pwfile.write_text(settings.pg_password + "\n")
    pwfile.chmod(0o600)
    if user:
        info = pwd.getpwnam(user)
        os.chown(pwfile, info.pw_uid, info.pw_gid)
    try:
        done = as_user(
            [
                str(bin_dir() / "initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            user,
            timeout=120,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise ServiceError(NAME, f"initdb failed: {lines[-1] if lines else done.returncode}")


def start(settings: Settings) -> str:
    """Start the server unless it runs; create the databases. Returns a status line."""
    pids = pid_file(settings)
    if pids.pid():
        check(settings)
        ensure_databases(settings)
        return status(settings)
    user = os_user()
    data = data_dir(settings)
    if not (data / "PG_VERSION").exists():
        if data.exists():
            shutil.rmtree(data)  # a half-made data directory from an interrupted initdb
        init(settings, user)
    (data / "postmaster.pid").unlink(missing_ok=True)  # stale after a crash; ours is not running
    log = settings.logs / "postgres.log"
    if user:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
    argv = [
        str(bin_dir() / "postgres"),
        "-D",
        str(data),
        "-p",
        str(settings.pg_port),
        "-c",
        f"listen_addresses={HOST}",
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=200",
    ]
    proc = spawn(argv, log, env={"PATH": os.environ.get("PATH", ""), "LANG": "C"}, user=user)
    pids.write(proc.pid)
    try:
        wait_until(NAME, lambda: _answers(settings), START_TIMEOUT, proc, log)
    except ServiceError as exc:
        pids.stop(signal.SIGINT, group=False)
        if "password authentication failed" in str(exc):
            raise ServiceError(
                NAME,
                f"{data} was initialised with another password than {settings.env_file}'s "
                f"(was the env file replaced?): restore it, or remove {data} to start afresh",
            ) from None
        raise
    ensure_databases(settings)
    return status(settings)


def ensure_databases(settings: Settings) -> None:
    conn = connect(settings)
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            present = {row[0] for row in cur.fetchall()}
            for name in DATABASES:
                if name not in present:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def stop(settings: Settings) -> bool:
    """Fast shutdown (SIGINT to the postmaster: open transactions roll back)."""
    return pid_file(settings).stop(signal.SIGINT, group=False)


def status(settings: Settings) -> str:
    pid = pid_file(settings).pid()
    if pid is None:
        return f"{NAME}: stopped"
    try:
        check(settings)
    except ServiceError as exc:
        return f"{NAME}: running (pid {pid}) but not answering: {str(exc).removeprefix(NAME + ': ')}"
    return (
        f"{NAME}: running (pid {pid}) on {HOST}:{settings.pg_port}, databases {', '.join(DATABASES)}, "
        f"data in {data_dir(settings)}"
    )
