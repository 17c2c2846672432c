"""MLflow tracking: where runs go, and one run's lifecycle, params, metrics and artifacts."""

from nnlab.tracking.mlflow_run import Run, default_tracking_uri, flatten, open_run, resolve_tracking_uri

__all__ = ["Run", "default_tracking_uri", "flatten", "open_run", "resolve_tracking_uri"]
