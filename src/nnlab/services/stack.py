"""The three services in order (PostgreSQL, the object store, the tracking server): up, down,
status. ``up`` is idempotent: a service already running is checked and left alone, a stopped
one is started, and the first that fails stops ``up`` with one line naming it."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from nnlab.config.paths import exclusive_lock
from nnlab.services import objectstore, postgres, tracking_server
from nnlab.services.settings import ServiceError, Settings, port_in_use

SERVICES = (postgres, objectstore, tracking_server)
DVC_REMOTE = "team"


def locked(folder: Path) -> AbstractContextManager[None]:
    """One ``up`` or ``down`` at a time per services folder."""
    return exclusive_lock(folder / ".lock")


def _ports_of(settings: Settings, service) -> dict[str, int]:
    prefix = {"postgres": "postgres", "s3": "s3", "mlflow": "mlflow"}[service.NAME]
    return {name: port for name, port in settings.ports().items() if name.split()[0] == prefix}


def check_ports(settings: Settings, service) -> None:
    """A stopped service's ports must be free: another program on one is named, not waited for."""
    for name, port in _ports_of(settings, service).items():
        if port_in_use(port):
            raise ServiceError(
                service.NAME,
                f"port {port} ({name}) is in use by another program; stop it or change it in {settings.env_file}",
            )


def up(folder: Path) -> list[str]:
    folder = Path(folder).absolute()
    with locked(folder):
        settings = Settings.load(folder)
        settings.write()  # before anything starts: initdb takes its password from here
        lines = []
        for service in SERVICES:
            if service.pid_file(settings).pid() is None:
                check_ports(settings, service)
            lines.append(service.start(settings))
        project = folder.parent
        if folder.name == ".services" and (project / ".dvc").is_dir():
            configure_dvc_remote(project, settings)
            lines.append(f"dvc: remote {DVC_REMOTE!r} credentials in {project / '.dvc' / 'config.local'}")
        return lines


def down(folder: Path) -> list[str]:
    folder = Path(folder).absolute()
    if not (folder / "env").exists():
        return [f"{s.NAME}: not running" for s in SERVICES]
    with locked(folder):
        settings = Settings.load(folder)
        return [f"{s.NAME}: {'stopped' if s.stop(settings) else 'not running'}" for s in reversed(SERVICES)]


def status(folder: Path) -> tuple[list[str], bool]:
    """One line per service, and whether all of them run and answer."""
    folder = Path(folder).absolute()
    if not (folder / "env").exists():
        return [f"{s.NAME}: stopped (no {folder / 'env'}: run make services-up)" for s in SERVICES], False
    settings = Settings.load(folder)
    lines = [s.status(settings) for s in SERVICES]
    return lines, all(
        ": running" in line and "not answering" not in line and "does not answer" not in line for line in lines
    )


def configure_dvc_remote(project: Path, settings: Settings, remote: str = DVC_REMOTE) -> Path:
    """The DVC remote's endpoint and keys in ``.dvc/config.local`` (git-ignored): .dvc/config
    names the bucket and the default endpoint, never a credential."""
    from configobj import ConfigObj

    path = Path(project) / ".dvc" / "config.local"
    config = ConfigObj(str(path)) if path.exists() else ConfigObj()
    config.filename = str(path)
    section = f'remote "{remote}"'
    if section not in config:
        config[section] = {}
    config[section].update(
        {
            "url": f"s3://{settings.dvc_bucket}",
            "endpointurl": settings.s3_endpoint,
            "access_key_id": settings.s3_access_key,
            "secret_access_key": settings.s3_secret_key,
            "region": "us-east-1",
        }
    )
    config.write()
    path.chmod(0o600)
    return path
