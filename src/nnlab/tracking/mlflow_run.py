"""One MLflow run per training, owned by a context manager so no run is left RUNNING."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
NOISE_KEYS = ("_target_", "_partial_")


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None, root: Path) -> str:
    """``MLFLOW_TRACKING_URI``, else the config's, else a SQLite store at the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or default_tracking_uri(root)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"model.hidden_sizes": "[128, 64]", ...}`` without Hydra's ``_target_`` noise."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif key in NOISE_KEYS:
            if key == "_target_":
                flat[f"{prefix}class"] = str(value).rsplit(".", 1)[-1]
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


class Run:
    """Logging into one existing run through the client (no global active-run state)."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


def _experiment_id(client: MlflowClient, name: str, root: Path, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A local store keeps its artifacts beside it; a server decides for itself.
    location = (Path(root) / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    return client.create_experiment(name, artifact_location=location)


@contextmanager
def open_run(experiment: str, run_name: str, root: Path, tracking_uri: str | None = None,
             tags: Mapping[str, Any] | None = None) -> Iterator[Run]:
    """Start a run; end it FINISHED, FAILED (with the error as a tag) or KILLED (Ctrl-C)."""
    uri = resolve_tracking_uri(tracking_uri, root)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, experiment, root, uri)
    info = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    run = Run(client, info.info.run_id)
    try:
        yield run
    except KeyboardInterrupt:
        client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as exc:
        client.set_tag(run.run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
        client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.FINISHED))


def existing_run(run_id: str, root: Path, tracking_uri: str | None = None) -> Run:
    return Run(MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri, root)), run_id)
