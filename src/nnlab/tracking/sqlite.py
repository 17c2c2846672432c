"""SQLite databases of the stores (MLflow's mlflow.db, Optuna's optuna.db): their file, and a lock
beside it. Imports nothing heavy, so Optuna's side does not pay for MLflow or the reverse."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nnlab.config.paths import exclusive_lock


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for any other database or store."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


@contextmanager
def creation_lock(url: str) -> Iterator[Path | None]:
    """An exclusive lock on ``<database>.lock`` while the tables of a SQLite database may be
    created or migrated: processes started together otherwise race to create them. Other
    databases lock themselves: nothing to do. Yields the database file (None: not SQLite)."""
    database = sqlite_file(url)
    if database is None:
        yield None
        return
    with exclusive_lock(database.with_name(database.name + ".lock")):
        yield database
