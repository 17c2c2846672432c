"""What nnlab's records are called in MLflow: the data set of a run, the experiment its runs
share, the name of its logged and registered model. Imports no MLflow (a training with
``logger=none`` and the sweep callback read these names too)."""

from __future__ import annotations

from omegaconf import DictConfig

from nnlab.config.paths import data_set_name


def data_name(cfg: DictConfig) -> str:
    """mnist or blobs: the data module's name (``MNISTDataModule`` -> ``mnist``)."""
    return data_set_name(cfg.data._target_)


def experiment_name(cfg: DictConfig) -> str:
    """The MLflow experiment of a run: ``logger.mlflow.experiment_name``, by default
    ``nnlab-<data set>`` resolved in the config itself (``${nnlab_data_set:${data._target_}}``), so
    the run's params, params.yaml and config.yaml hold the name its runs are filed under, and
    runs that can be compared (same data, same test set) share one experiment."""
    return str(cfg.logger.mlflow.experiment_name)


def registered_model_name(cfg: DictConfig) -> str:
    """The registry's name for an nnlab experiment's models: ``nnlab-<name>``."""
    return f"nnlab-{cfg.name}"
