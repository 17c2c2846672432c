"""``mlflow server`` on PostgreSQL with artifacts proxied to the object store.

Clients talk HTTP to 127.0.0.1:<port> only: runs, metrics and the model registry go to the
``mlflow`` database; artifacts go through the server (``--artifacts-destination s3://...``) to
the ``nnlab-mlflow`` bucket, so clients need no S3 credentials. The server alone gets them,
through its environment (``MLFLOW_S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), and the
database password through ``PGPASSWORD``: neither appears on a command line.
"""

from __future__ import annotations

import os
import sys
import urllib.request

from nnlab.services import postgres
from nnlab.services.process import PidFile, spawn, wait_until
from nnlab.services.settings import HOST, ServiceError, Settings

NAME = "mlflow"
START_TIMEOUT = 180  # the first start creates and migrates the schema
# The caller's MLflow settings must not leak into the server (it reads its own store).
DROPPED = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_BACKEND_STORE_URI")


def pid_file(settings: Settings) -> PidFile:
    return PidFile(settings.pids, NAME, f"--port {settings.mlflow_port}")


def server_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED and not k.startswith(("AWS_", "PG"))}
    env.update(
        PGPASSWORD=settings.pg_password,
        MLFLOW_S3_ENDPOINT_URL=settings.s3_endpoint,
        AWS_ACCESS_KEY_ID=settings.s3_access_key,
        AWS_SECRET_ACCESS_KEY=settings.s3_secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        # No GenAI job runner (seven huey worker processes): nothing here submits server jobs.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    return env


def argv(settings: Settings, port: int, artifacts_destination: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.database_url("mlflow"),
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(settings.mlflow_workers),
    ]


def answers(uri: str, timeout: float = 5) -> bool:
    """/health says OK and a query that needs the database succeeds."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
            if response.read().strip() != b"OK":
                return False
        url = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def launch(settings: Settings, port: int, artifacts_destination: str, log_name: str, pids: PidFile) -> None:
    """Start a server on ``port`` and wait for it (also used for a second server in tests).
    The database login is tried first: MLflow itself retries a refused one for minutes."""
    try:
        postgres.check(settings, database="mlflow")
    except ServiceError as exc:
        reason = str(exc).removeprefix(f"{postgres.NAME}: ")
        raise ServiceError(NAME, f"backend store {settings.database_url('mlflow')}: {reason}") from None
    log = settings.logs / f"{log_name}.log"
    proc = spawn(argv(settings, port, artifacts_destination), log, env=server_env(settings), cwd=settings.dir)
    pids.write(proc.pid)
    try:
        wait_until(NAME, lambda: answers(f"http://{HOST}:{port}"), START_TIMEOUT, proc, log, interval=0.5)
    except ServiceError:
        pids.stop()
        raise


def start(settings: Settings) -> str:
    pids = pid_file(settings)
    if pids.pid() is None:
        launch(settings, settings.mlflow_port, settings.artifacts_destination, NAME, pids)
    elif not answers(settings.tracking_uri):
        raise ServiceError(NAME, f"running (pid {pids.pid()}) but {settings.tracking_uri} does not answer")
    return status(settings)


def stop(settings: Settings) -> bool:
    return pid_file(settings).stop()


def status(settings: Settings) -> str:
    pid = pid_file(settings).pid()
    if pid is None:
        return f"{NAME}: stopped"
    if not answers(settings.tracking_uri):
        return f"{NAME}: running (pid {pid}) but {settings.tracking_uri} does not answer"
    return f"{NAME}: running (pid {pid}) on {settings.tracking_uri}, artifacts in {settings.artifacts_destination}"
