"""One MLflow run per training, owned by a context manager so no run is left RUNNING."""

from __future__ import annotations

import errno
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from nnlab.config.paths import store_root
from nnlab.config.process import alive, identity
from nnlab.config.schema import TRACKING_SCHEMES, unknown_tracking_scheme
from nnlab.errors import TrackingError, first_line
from nnlab.tracking.credentials import credentials_to_environment
from nnlab.tracking.sqlite import creation_lock, sqlite_file

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
NOISE_KEYS = ("_target_", "_partial_")


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{store_root(root).resolve() / 'mlflow.db'}"


SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_file(uri: str) -> None:
    """A ``sqlite:///`` store naming a file that is not an SQLite database: one line, not
    SQLAlchemy's page of traceback (an empty file is a new store)."""
    database = sqlite_file(uri)
    if database is None or not database.is_file() or database.stat().st_size == 0:
        return
    with database.open("rb") as handle:
        if handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER:
            return
    raise TrackingError(
        f"tracking store {uri}: {database} is not an SQLite database; point MLFLOW_TRACKING_URI (or "
        "logger.mlflow.tracking_uri) at the store's .db file, or move that file aside to start a new store"
    )


@contextmanager
def opening_store(uri: str) -> Iterator[None]:
    """Opening, creating or first writing the store: a failure (a full disk, a damaged file) is one
    TrackingError line naming the store."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (MlflowException, SQLAlchemyError, OSError) as exc:
        detail = re.sub(r"^\(\w+\.\w+\) ", "", first_line(exc))[:300]
        full = "disk is full" in detail or getattr(exc, "errno", None) == errno.ENOSPC
        hint = "; free space on its disk or point MLFLOW_TRACKING_URI elsewhere" if full else ""
        raise TrackingError(f"tracking store {uri} cannot be used: {detail}{hint}") from None


@contextmanager
def artifact_writes(uri: str) -> Iterator[None]:
    """Copying files into the store's artifacts: a disk that is full or cannot be written there is
    one TrackingError line naming the store (MLflow's copy names no file)."""
    try:
        yield
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        hint = "free space on its disk" if full else "check that this user can write its artifact folder"
        raise TrackingError(
            f"tracking store {uri} could not store the run's artifacts ({exc.strerror or exc}); {hint} "
            "or point MLFLOW_TRACKING_URI elsewhere"
        ) from None


def check_artifact_home(location: str | None, uri: str, root: Path) -> None:
    """The embedded store (mlflow.db at the project's root) records its artifact folder as an
    absolute path: after the project (or mlflow.db) was moved or copied, new artifacts would go to
    the old place without a word. Stop instead."""
    database, home = sqlite_file(uri), (store_root(root) / "mlartifacts").resolve()
    embedded = database is not None and database.resolve() == home.with_name("mlflow.db")
    if not embedded or not (location or "").startswith("file:"):
        return
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    kept = Path(url2pathname(urlparse(location).path))
    if kept == home or home in kept.parents:
        return
    raise TrackingError(
        f"tracking store {database} keeps its artifacts in {kept}, not beside it in {home}: the project (or "
        "mlflow.db) was moved or copied, and new artifacts would go to the old place; move it back, point "
        "MLFLOW_TRACKING_URI at the original store, or move mlflow.db and mlartifacts/ aside to start a new one"
    )


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """A tracking server must answer its /health within ``timeout`` seconds; MLflow's own client
    would retry for minutes before failing with a page of traceback."""
    check_sqlite_file(uri)
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).read()
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TrackingError(
            f"tracking server {uri} does not answer ({reason}); start it (make server) "
            "or point MLFLOW_TRACKING_URI / logger.mlflow.tracking_uri elsewhere"
        ) from None
    try:  # /health answers without the database: one query shows a server whose store is down
        urllib.request.urlopen(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise TrackingError(
                f"tracking server {uri} answers but fails (HTTP {exc.code}: {server_message(exc.read())}); "
                "its backend store may be down (make services-status)"
            ) from None
    except OSError:
        pass


def server_message(body: bytes | str) -> str:
    """The ``message`` of an MLflow server's JSON error, else the body's first line."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    found = re.search(r'"message":\s*"((?:[^"\\]|\\.)*)"', text)
    message = found.group(1).encode().decode("unicode_escape", "replace") if found else text
    return first_line(message)[:400]


def store_failure(uri: str, exc: BaseException) -> str:
    """One line for a tracking store that failed during a run."""
    text = " ".join(str(exc).split())
    if "Response body:" in text or '"message"' in text:
        detail = server_message(text)
    elif "Caused by ResponseError(" in text:
        reason = text.split("Caused by ResponseError(", 1)[1].split("'")[1]
        artifact = re.search(r"/mlflow-artifacts/artifacts/\S*?/artifacts/(\S+?)(?: failed|\s|$)", text)
        what = f"could not store artifact {artifact.group(1)} in its artifact store" if artifact else "failed"
        detail = f"the server {what} ({reason}; its log says why)"
    else:
        detail = first_line(exc)[:400]
    return f"tracking store {uri} failed during the run: {detail}"


def resolve_tracking_uri(configured: str | None, root: Path) -> str:
    """``MLFLOW_TRACKING_URI``, else the config's, else a SQLite store at the repository root.
    User info in the URI moves to MLflow's credential variables (see tracking.credentials)."""
    uri = credentials_to_environment(os.environ.get("MLFLOW_TRACKING_URI") or configured) or default_tracking_uri(root)
    scheme = unknown_tracking_scheme(uri)
    if scheme:
        raise TrackingError(
            f"tracking URI {uri!r}: unknown scheme {scheme!r}; use one of {', '.join(TRACKING_SCHEMES)}"
        )
    return uri


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
        self.stop_sampling: Callable[[], None] = lambda: None  # system_metrics: stop its samples now

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, **link: str | None) -> None:
        """``link``: ``model_id``, ``dataset_name``, ``dataset_digest`` (MLflow 3's metrics of a
        logged model on a data set, shown on the model's page)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0, **link) for k, v in metrics.items() if v is not None]
        self.client.log_batch(self.run_id, metrics=batch)

    def model_id(self) -> str | None:
        """The id of the model this run logged (None: it logged none)."""
        outputs = self.client.get_run(self.run_id).outputs
        found = outputs.model_outputs if outputs else []
        return found[-1].model_id if found else None

    def next_step(self) -> int:
        """A step after every step of the run's metrics so far."""
        keys = self.client.get_run(self.run_id).data.metrics
        steps = [m.step for key in keys for m in self.client.get_metric_history(self.run_id, key)]
        return max(steps, default=-1) + 1

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with artifact_writes(self.client.tracking_uri):
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        with artifact_writes(self.client.tracking_uri):
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

    def log_model(self, checkpoint: Path, input_example: np.ndarray, name: str) -> tuple[str, str]:
        """Log ``checkpoint``'s network as this run's pyfunc model ``name`` (tracking.served_model);
        returns (models:/ URI, model id). The fluent API creates the logged model in the *active*
        experiment, so point it at ours. Explicit requirements: inferring them costs seconds.
        The model gets only the metrics ``log_metrics(..., model_id=...)`` links to it: MLflow
        links to a new model the run's metrics at the model's step (the system metrics' first
        sample, the summary), so it is logged at a step no metric has, with the system metrics
        stopped; and logging makes it MLflow's active model, to which every metric logged
        afterwards in this thread would be linked, so that is cleared."""
        import mlflow
        import torch

        from nnlab.tracking.served_model import log_classifier

        self.stop_sampling()
        with self._fluent(), artifact_writes(self.client.tracking_uri):
            mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
            try:
                info = log_classifier(
                    self.run_id,
                    checkpoint,
                    input_example,
                    [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "pillow", "pandas"],
                    name=name,
                    step=self.next_step(),
                )
            finally:
                mlflow.clear_active_model()
        return info.model_uri, info.model_id

    def register_champion(self, model_name: str, about: str, version_about: str, metric: str = "test_acc") -> int:
        """Register this run's logged model under ``model_name`` with the description
        ``version_about``; give the alias ``champion`` to the version whose run has the best
        ``metric``, and describe the registered model as ``about`` and its champion. Returns the
        new version number."""
        import mlflow

        model_id = self.model_id()
        with self._fluent():
            version = mlflow.register_model(f"models:/{model_id}", model_name)
        self.client.update_model_version(model_name, version.version, description=version_about)
        versions = self.client.search_model_versions(f"name='{model_name}'")

        def score(v) -> float:
            return self.client.get_run(v.run_id).data.metrics.get(metric, float("-inf"))

        best = max(versions, key=lambda v: (score(v), int(v.version)))
        self.client.set_registered_model_alias(model_name, "champion", best.version)
        champion = self.client.get_model_version(model_name, best.version)
        self.client.update_registered_model(
            model_name,
            description=f"{about}\n\n@champion: version {best.version}. {champion.description or ''}".strip(),
        )
        return int(version.version)


def experiment_id(client: MlflowClient, name: str, root: Path, uri: str) -> str:
    """The experiment's id, creating it when missing (tolerating a parallel job creating it too)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        check_artifact_home(experiment.artifact_location, uri, root)
        return experiment.experiment_id
    # A local store keeps its artifacts beside it; a server decides for itself.
    location = (store_root(root) / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
    try:
        # MLflow's own record of the experiment's kind (what its UI's kind selector writes). The
        # 3.17 UI opens on what its URL's ``workflowType`` says instead (ui.runs_url).
        return client.create_experiment(
            name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"}
        )
    except MlflowException:
        return client.get_experiment_by_name(name).experiment_id


@contextmanager
def open_run(
    experiment: str,
    run_name: str,
    root: Path,
    tracking_uri: str | None = None,
    tags: Mapping[str, Any] | None = None,
    resume_id: str | None = None,
) -> Iterator[Run]:
    """Start a run (or continue ``resume_id``); end it FINISHED, FAILED (with the error as a tag)
    or KILLED (Ctrl-C). Runs of the same name left RUNNING by a dead process are marked KILLED."""
    uri = resolve_tracking_uri(tracking_uri, root)
    check_reachable(uri)
    with opening_store(uri):
        with store_lock(uri):  # a new SQLite store is created and migrated by one process at a time
            client = MlflowClient(tracking_uri=uri)
            exp_id = experiment_id(client, experiment, root, uri)
        mark_dead_runs_killed(client, exp_id, run_name)
        if resume_id:
            client.update_run(resume_id, status=RunStatus.to_string(RunStatus.RUNNING))
            for key, value in (tags or {}).items():
                client.set_tag(resume_id, key, value)
            run = Run(client, resume_id)
        else:
            run = Run(client, client.create_run(exp_id, run_name=run_name, tags=dict(tags or {})).info.run_id)
    try:
        yield run
    except KeyboardInterrupt:
        client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as exc:
        try:
            client.set_tag(run.run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
            client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.FAILED))
        except Exception:  # noqa: BLE001 (MLflow's, SQLAlchemy's, the disk's: the store cannot take it)
            pass  # the store itself is gone: the next run of this name marks this one KILLED
        if isinstance(exc, MlflowException):  # a server or store that failed mid-run: one line
            raise TrackingError(store_failure(uri, exc)) from exc
        raise
    else:
        client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.FINISHED))


@contextmanager
def system_metrics(run: Run, interval: float | None, resumed: bool = False) -> Iterator[None]:
    """MLflow's system metrics (CPU, memory, disk, network; GPU when NVIDIA's library finds
    one) as ``system/...`` every ``interval`` seconds while the block runs (None: off), or until
    ``run.stop_sampling()``. Our runs are created through the client, which does not start
    MLflow's monitor by itself."""
    if not interval:
        yield
        return
    import logging

    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(
        run.run_id, sampling_interval=interval, resume_logging=resumed, tracking_uri=run.client.tracking_uri
    )
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        monitor.finish()
        # The monitor's loop stops without logging the samples of its last, partial interval.
        if any(m.metrics for m in monitor.monitors):
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()

    monitor.start()
    run.stop_sampling = stop
    try:
        yield
    finally:
        stop()


def process_tags() -> dict[str, str]:
    """Which process runs this (host, pid and start time: a pid alone may be given to another
    process later): a later run uses it to tell a dead run from a live one."""
    me = identity()
    return {"nnlab.host": me["host"], "nnlab.pid": str(me["pid"]), "nnlab.started": str(me["started"] or "")}


def mark_dead_runs_killed(client: MlflowClient, exp_id: str, run_name: str) -> list[str]:
    """Runs named ``run_name`` still RUNNING whose process on this host is gone (its pid no longer
    runs, or now names a process started at another time): KILLED, with a tag (a run resumed
    afterwards keeps the tag: it records that the run's process died once). The status is read
    again once the process is known to be gone: one that ended its run FINISHED and exited between
    the search and the check did not die while RUNNING."""
    host = socket.gethostname()
    runs = client.search_runs(
        [exp_id], filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'RUNNING'"
    )
    dead = []
    for found in runs:
        tags = found.data.tags
        pid = tags.get("nnlab.pid", "")
        if tags.get("nnlab.host") != host or not pid.isdigit():
            continue
        if alive(int(pid), tags.get("nnlab.started") or None):
            continue
        if client.get_run(found.info.run_id).info.status == "RUNNING":
            client.set_tag(
                found.info.run_id, "killed_reason", f"process {pid} on {host} died while the run was RUNNING"
            )
            client.set_terminated(found.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            dead.append(found.info.run_id)
    return dead


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """A new SQLite store is created and migrated under its creation lock: eight trainings started
    at once on a new store otherwise race to create its tables."""
    with creation_lock(uri) as database:
        if database is not None:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates and migrates the store
        yield


class RunNotFound(TrackingError):
    """The store answers but holds no run of that id."""

    def __init__(self, uri: str, run_id: str):
        super().__init__(f"tracking store {uri} has no run {run_id}")
        self.uri, self.run_id = uri, run_id


def existing_run(run_id: str, root: Path, tracking_uri: str | None = None) -> Run:
    """Run ``run_id`` of the store, checked first: a server that is down would otherwise be retried
    for minutes, and a missing run fail with a traceback after the work that was to be recorded."""
    uri = resolve_tracking_uri(tracking_uri, root)
    check_reachable(uri)
    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        raise RunNotFound(uri, run_id)  # and looking must not create an empty store there
    with opening_store(uri), store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise RunNotFound(uri, run_id) from None
    check_artifact_home(found.info.artifact_uri, uri, root)
    return Run(client, run_id)
