"""The logged MLflow model: the network behind the input handling a user needs.

``mlflow.pyfunc.load_model(uri).predict(x)`` (and ``mlflow models serve``) take what a user has:
- image models: a batch of 28×28 MNIST-style images (n, 28, 28) or (n, 1, 28, 28) with pixels in
  [0, 1], or raw grey pictures of any other size (values in [0, 1] or 0-255, dark ink on light
  paper or the other way round), which get MNIST's own preprocessing (``nnlab.data.images``);
- the blobs model: (n, 2) points standardised like data/blobs/.
It returns a DataFrame with the predicted ``label`` and the ``logits`` of each input.

The network is stored as a state dict beside its saved config (read back through the checked
path of ``models.checkpoint``, never by unpickling), and the model carries nnlab's own code
(``code_paths``), so loading it needs MLflow and torch, not an installed nnlab.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import mlflow.models
import mlflow.pyfunc
import numpy as np

MNIST_SIDE = 28


def mnist_batch(model_input) -> np.ndarray:
    """(n, 1, 28, 28) float32 pixels in [0, 1] from any of the image inputs above."""
    x = np.asarray(model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input, dtype=np.float32)
    if x.ndim == 2:  # one picture
        x = x[None]
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"expected images of shape (n, height, width), got {list(x.shape)}")
    if x.shape[1:] == (MNIST_SIDE, MNIST_SIDE) and x.max(initial=0) <= 1:
        return x[:, None]
    from PIL import Image

    from nnlab.data.images import to_mnist

    scale = 255.0 if x.max(initial=0) <= 1 else 1.0
    pictures = (Image.fromarray(np.clip(p * scale, 0, 255).astype(np.uint8), "L") for p in x)
    return np.stack([to_mnist(p, f"image {i}") for i, p in enumerate(pictures)])[:, None].astype(np.float32)


class Classifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of one nnlab network (see the module's docstring)."""

    def load_context(self, context) -> None:
        from nnlab.models.checkpoint import load_network

        self.net, cfg = load_network(context.artifacts["checkpoint"])
        self.images = "mean" in cfg.data
        self.mean, self.std = (float(cfg.data.mean), float(cfg.data.std)) if self.images else (0.0, 1.0)

    def predict(self, context, model_input: np.ndarray, params=None):  # the hint keeps MLflow quiet
        import pandas as pd
        import torch

        if self.images:
            x = (mnist_batch(model_input) - self.mean) / self.std
        else:
            x = np.asarray(model_input, dtype=np.float32)
        with torch.no_grad():
            logits = self.net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        return pd.DataFrame({"label": logits.argmax(axis=1), "logits": list(logits.astype(np.float64))})


def signature(example: np.ndarray, images: bool):
    """Images: (n, height, width) of any size (MLflow checks the rank and dtype, the model the rest)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    shape = (-1, -1, -1) if images else (-1, example.shape[1])
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), shape)]))


@contextlib.contextmanager
def requirement_check_without_scan():
    """MLflow checks a model's pip requirements against the installed versions when it logs or
    loads one, and to do so first maps every importable module to its distribution by reading
    every installed distribution's file list (``packages_distributions``: 1.4 s on the 2-core
    machine, in every training that logs a model). The check reads versions by package name and
    needs that map only for a package whose metadata is missing, which it then imports by name
    instead; with the map left empty for the call the same check runs, without the scan. Anything
    else in the process (inferring a model's requirements) still builds the full map."""
    from mlflow.utils import requirements_utils

    if getattr(requirements_utils, "_MODULES_TO_PACKAGES", ()) is not None:  # built already (or renamed)
        yield
        return
    requirements_utils._MODULES_TO_PACKAGES = {}
    try:
        yield
    finally:
        requirements_utils._MODULES_TO_PACKAGES = None


def log_classifier(run_id: str, checkpoint: Path, example: np.ndarray, images: bool, requirements: list[str]):
    """Log the pyfunc model of ``checkpoint`` (weights and config only) as ``run_id``'s ``model``."""
    import tempfile

    import nnlab
    from nnlab.models.checkpoint import network_only

    with tempfile.TemporaryDirectory() as tmp, requirement_check_without_scan():
        network = network_only(checkpoint, Path(tmp) / "network.ckpt")
        return mlflow.models.Model.log(
            artifact_path=None,
            name="model",
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=Classifier(),
            artifacts={"checkpoint": str(network)},
            code_paths=[str(Path(nnlab.__file__).parent)],
            signature=signature(example, images),
            input_example=example,
            pip_requirements=requirements,
        )
