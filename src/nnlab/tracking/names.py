"""What nnlab's records are called in MLflow: the data set of a run, the experiment its runs
share, the name of its logged and registered model. Imports no MLflow (a training with
``logger=none`` and the sweep callback read these names too)."""

from __future__ import annotations

from omegaconf import DictConfig

DATA_PLACEHOLDER = "{data}"


def data_name(cfg: DictConfig) -> str:
    """mnist or blobs: the data module's name (``MNISTDataModule`` -> ``mnist``)."""
    return cfg.data._target_.rsplit(".", 1)[-1].removesuffix("DataModule").lower()


def experiment_name(cfg: DictConfig) -> str:
    """The MLflow experiment of a run: ``logger.mlflow.experiment_name`` with ``{data}`` replaced
    by the data set's name, so runs that can be compared (same data, same test set) share one
    experiment and blobs runs never sort above MNIST runs."""
    return str(cfg.logger.mlflow.experiment_name).replace(DATA_PLACEHOLDER, data_name(cfg))


def registered_model_name(cfg: DictConfig) -> str:
    """The registry's name for an nnlab experiment's models: ``nnlab-<name>``."""
    return f"nnlab-{cfg.name}"
