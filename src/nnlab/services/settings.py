"""Ports, credentials and URLs of the team services, kept in one git-ignored env file.

The first ``up`` chooses them (defaults below, each overridable by the environment variable of
the same name) and writes ``<dir>/env`` (mode 600); every later ``up``, ``down`` and ``status``
reads that file, so ports and passwords stay stable across restarts. ``source .services/env``
gives a shell everything a client needs: ``MLFLOW_TRACKING_URI``, libpq's ``PG*`` variables,
``NNLAB_OPTUNA_STORAGE`` and the S3 endpoint and keys (as ``NNLAB_S3_*``, so a sourced shell
keeps its own AWS credentials).
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

from nnlab.errors import NnlabError

HOST = "127.0.0.1"
PG_USER = "nnlab"
DRIVER = "postgresql+psycopg2"
DATABASES = ("mlflow", "optuna")
ENV_FILE = "env"

# Defaults of a project's services: fixed, so .dvc/config can name the S3 endpoint. The object
# store's internal ports are master, master gRPC, volume, volume gRPC, filer, filer gRPC, S3 gRPC.
DEFAULT_PORTS = {"NNLAB_PG_PORT": 15432, "NNLAB_S3_PORT": 8333, "NNLAB_MLFLOW_PORT": 5050}
DEFAULT_WEED_PORTS = (18330, 18331, 18332, 18333, 18334, 18335, 18336)
MLFLOW_BUCKET, DVC_BUCKET = "nnlab-mlflow", "nnlab-dvc"


class ServiceError(NnlabError, RuntimeError):
    """A service that cannot start, answer or stop: ``<service>: <reason>`` in one line."""

    def __init__(self, service: str, reason: str):
        super().__init__(f"{service}: {reason}")
        self.service = service


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


class ServiceFolder:
    """The places every services folder has (the team services', the Slurm cluster's): the env
    file, the daemons' logs and their PID files. A dataclass below declares ``dir``."""

    dir: Path

    @property
    def env_file(self) -> Path:
        return self.dir / ENV_FILE

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def pids(self) -> Path:
        return self.dir / "pids"


@dataclass
class Settings(ServiceFolder):
    dir: Path
    pg_port: int = DEFAULT_PORTS["NNLAB_PG_PORT"]
    pg_password: str = ""
    s3_port: int = DEFAULT_PORTS["NNLAB_S3_PORT"]
    s3_access_key: str = ""
    s3_secret_key: str = ""
    weed_ports: tuple[int, ...] = DEFAULT_WEED_PORTS
    mlflow_port: int = DEFAULT_PORTS["NNLAB_MLFLOW_PORT"]
    mlflow_workers: int = 2
    mlflow_bucket: str = MLFLOW_BUCKET
    dvc_bucket: str = DVC_BUCKET

    # ---- derived values -------------------------------------------------------------------
    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def artifacts_destination(self) -> str:
        return f"s3://{self.mlflow_bucket}/artifacts"

    def database_url(self, database: str) -> str:
        """``postgresql+psycopg2://nnlab@127.0.0.1:<port>/<database>``, a SQLAlchemy URL (MLflow,
        Optuna). No password: libpq reads ``PGPASSWORD``, so the URL can be shown, logged or
        tagged. The driver is named because SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3."""
        return f"{DRIVER}://{PG_USER}@{HOST}:{self.pg_port}/{database}"

    def ports(self) -> dict[str, int]:
        """Every port the services listen on, named."""
        names = ("master", "master-grpc", "volume", "volume-grpc", "filer", "filer-grpc", "s3-grpc")
        return {
            "postgres": self.pg_port,
            "s3": self.s3_port,
            **{f"s3 {n}": p for n, p in zip(names, self.weed_ports)},
            "mlflow": self.mlflow_port,
        }

    def client_env(self) -> dict[str, str]:
        """What ``.services/env`` exports."""
        return {
            "NNLAB_SERVICES_DIR": str(self.dir),
            "NNLAB_PG_PORT": str(self.pg_port),
            "PGHOST": HOST,
            "PGPORT": str(self.pg_port),
            "PGUSER": PG_USER,
            "PGPASSWORD": self.pg_password,
            "NNLAB_OPTUNA_STORAGE": self.database_url("optuna"),
            "NNLAB_MLFLOW_BACKEND_STORE_URI": self.database_url("mlflow"),
            "NNLAB_S3_PORT": str(self.s3_port),
            "NNLAB_S3_ENDPOINT_URL": self.s3_endpoint,
            "NNLAB_S3_ACCESS_KEY_ID": self.s3_access_key,
            "NNLAB_S3_SECRET_ACCESS_KEY": self.s3_secret_key,
            "NNLAB_S3_MLFLOW_BUCKET": self.mlflow_bucket,
            "NNLAB_S3_DVC_BUCKET": self.dvc_bucket,
            "NNLAB_WEED_PORTS": ",".join(map(str, self.weed_ports)),
            "NNLAB_MLFLOW_PORT": str(self.mlflow_port),
            "NNLAB_MLFLOW_WORKERS": str(self.mlflow_workers),
            "NNLAB_MLFLOW_ARTIFACTS_DESTINATION": self.artifacts_destination,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
        }

    # ---- the env file ---------------------------------------------------------------------
    def write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "# Team services of this project, written by `make services-up` (python -m nnlab.team up).",
            "# Secrets: keep this file out of git (it is ignored). Use it with:  source .services/env",
            *(f"export {key}={shlex.quote(value)}" for key, value in self.client_env().items()),
        ]
        tmp = self.env_file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o600)
        tmp.replace(self.env_file)

    @classmethod
    def load(cls, folder: Path) -> Settings:
        """The settings in ``folder/env``, or new ones: defaults, environment overrides, fresh secrets."""
        folder = Path(folder).absolute()
        path = folder / ENV_FILE
        if not path.exists():
            return cls.fresh(folder)
        values = read_env_file(path)
        try:
            settings = cls(
                dir=folder,
                pg_port=int(values["NNLAB_PG_PORT"]),
                pg_password=values["PGPASSWORD"],
                s3_port=int(values["NNLAB_S3_PORT"]),
                s3_access_key=values["NNLAB_S3_ACCESS_KEY_ID"],
                s3_secret_key=values["NNLAB_S3_SECRET_ACCESS_KEY"],
                weed_ports=tuple(int(p) for p in values["NNLAB_WEED_PORTS"].split(",")),
                mlflow_port=int(values["NNLAB_MLFLOW_PORT"]),
                mlflow_workers=int(values.get("NNLAB_MLFLOW_WORKERS", "2")),
                mlflow_bucket=values["NNLAB_S3_MLFLOW_BUCKET"],
                dvc_bucket=values["NNLAB_S3_DVC_BUCKET"],
            )
        except (KeyError, ValueError) as exc:
            raise ServiceError(
                "settings", f"{path} is incomplete or damaged ({exc}); remove {folder} to start afresh"
            ) from None
        if len(settings.weed_ports) != len(DEFAULT_WEED_PORTS):
            raise ServiceError("settings", f"{path}: NNLAB_WEED_PORTS needs {len(DEFAULT_WEED_PORTS)} ports")
        return settings

    @classmethod
    def fresh(cls, folder: Path) -> Settings:
        env = os.environ

        def port(name: str) -> int:
            return int(env.get(name) or DEFAULT_PORTS[name])

        weed = env.get("NNLAB_WEED_PORTS")
        return cls(
            dir=Path(folder).absolute(),
            pg_port=port("NNLAB_PG_PORT"),
            pg_password=secrets.token_urlsafe(24),
            s3_port=port("NNLAB_S3_PORT"),
            s3_access_key="nnlab" + secrets.token_hex(8),
            s3_secret_key=secrets.token_urlsafe(30),
            weed_ports=tuple(int(p) for p in weed.split(",")) if weed else DEFAULT_WEED_PORTS,
            mlflow_port=port("NNLAB_MLFLOW_PORT"),
            mlflow_workers=int(env.get("NNLAB_MLFLOW_WORKERS") or 2),
        )

    @classmethod
    def with_free_ports(cls, folder: Path) -> Settings:
        """New settings on ports that are free now (what the tests use)."""
        settings = cls.fresh(folder)
        chosen: set[int] = set()
        while len(chosen) < 3 + len(DEFAULT_WEED_PORTS):
            chosen.add(free_port())
        ports = sorted(chosen)
        settings.pg_port, settings.s3_port, settings.mlflow_port = ports[:3]
        settings.weed_ports = tuple(ports[3:])
        return settings


def read_env_file(path: Path) -> dict[str, str]:
    """``export KEY=VALUE`` lines (values shell-quoted) as a dict."""
    values = {}
    for line in Path(path).read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            values[key] = value
    return values
