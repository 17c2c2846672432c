"""One MLflow run per training, owned by a context manager so no run is left RUNNING."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nnlab.tracking.credentials import strip_credentials

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
NOISE_KEYS = ("_target_", "_partial_")


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None, root: Path) -> str:
    """``MLFLOW_TRACKING_URI``, else the config's, else a SQLite store at the repository root.
    User info in the URI moves to MLflow's credential variables (see tracking.credentials)."""
    return strip_credentials(os.environ.get("MLFLOW_TRACKING_URI") or configured) or default_tracking_uri(root)


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

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    @contextmanager
    def _fluent(self) -> Iterator[None]:
        """Point MLflow's fluent API at this run's store for a moment. mlflow.set_tracking_uri
        also writes MLFLOW_TRACKING_URI, which would redirect every later run of the process."""
        import mlflow

        saved_env = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.client.tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved_env)
            if saved_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)

    def log_model(self, model, input_example: np.ndarray, serialization_format: str = "pt2") -> str:
        """Log a torch model as this run's ``model``; returns its models:/ URI.

        The fluent API creates the logged model in the *active* experiment, so point it at ours.
        Explicit requirements: inferring them costs seconds per run."""
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(input_example)).numpy()
        with self._fluent():
            mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                input_example=input_example,
                signature=infer_signature(input_example, output),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
                serialization_format=serialization_format,
                run_id=self.run_id,
            )
        return info.model_uri

    def register_champion(self, model_name: str, metric: str = "test_acc") -> int:
        """Register this run's model under ``model_name``; give the alias ``champion`` to the
        version whose run has the best ``metric``. Returns the new version number."""
        import mlflow

        with self._fluent():
            version = mlflow.register_model(f"runs:/{self.run_id}/model", model_name)
        versions = self.client.search_model_versions(f"name='{model_name}'")

        def score(v) -> float:
            return self.client.get_run(v.run_id).data.metrics.get(metric, float("-inf"))

        best = max(versions, key=lambda v: (score(v), int(v.version)))
        self.client.set_registered_model_alias(model_name, "champion", best.version)
        return int(version.version)


def experiment_id(client: MlflowClient, name: str, root: Path, uri: str) -> str:
    """The experiment's id, creating it when missing (tolerating a parallel job creating it too)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A local store keeps its artifacts beside it; a server decides for itself.
    location = (Path(root) / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    try:
        # The kind tag makes the MLflow UI open on its training-runs view, not the GenAI one.
        return client.create_experiment(
            name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"}
        )
    except MlflowException:
        return client.get_experiment_by_name(name).experiment_id


@contextmanager
def open_run(
    experiment: str, run_name: str, root: Path, tracking_uri: str | None = None, tags: Mapping[str, Any] | None = None
) -> Iterator[Run]:
    """Start a run; end it FINISHED, FAILED (with the error as a tag) or KILLED (Ctrl-C)."""
    uri = resolve_tracking_uri(tracking_uri, root)
    client = MlflowClient(tracking_uri=uri)
    exp_id = experiment_id(client, experiment, root, uri)
    info = client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
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
