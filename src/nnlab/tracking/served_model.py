"""The logged MLflow model: the network behind the input handling a user needs.

``mlflow.pyfunc.load_model(uri).predict(x)`` (and ``mlflow models serve``) take what a user has:
- image models: a batch of 28×28 MNIST-style images (n, 28, 28) or (n, 1, 28, 28) with pixels in
  [0, 1], or raw grey pictures of any other size (values in [0, 1] or 0-255, dark ink on light
  paper or the other way round), which get MNIST's own preprocessing (``nnlab.data.images``);
- the blobs model: (n, 2) points standardised like data/blobs/.
It returns a DataFrame with the predicted ``label``, the class ``probabilities`` and the
``logits`` of each input. A request it cannot answer raises ``BadInput``: HTTP 400 with one
line saying what was wrong (an image with NaN, one with no ink, a wrong shape).

The network is stored as a state dict beside its saved config (read back through the checked
path of ``models.checkpoint``, never by unpickling), and the model carries nnlab's own code
(``code_paths``), so loading it needs MLflow and torch, not an installed nnlab.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.models
import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

MNIST_SIDE = 28
MIN_SIDE = 8  # a smaller "image" is a mistake (a flattened batch is one 1×784 picture per row)
MIN_CONTRAST = 0.05  # as nnlab.data.images: ink minus background below this is a blank image


class BadInput(MlflowException):
    """A request the model cannot answer: HTTP 400 from ``mlflow models serve`` with ``reason``
    as its whole message. The scoring server puts the request itself in front of the message of
    an error a model raises (for one 28×28 image, 4 KB of numbers); a reason must stay short, so
    this exception's message is its reason whatever is assigned to it later."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self.reason

    @message.setter
    def message(self, _value: str) -> None:
        pass


def as_numbers(model_input, what: str) -> np.ndarray:
    """float32 array of the request, or BadInput (ragged lists, strings)."""
    try:
        x = np.asarray(model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadInput(f"{what} must be numbers, all of one shape") from None
    if x.ndim == 0 or x.shape[0] == 0:
        raise BadInput(f"no {what} in the request")
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise BadInput(f"{what[:-1]} {int(np.argmax(bad))} has NaN or infinite values")
    return x


def image_batch(model_input) -> np.ndarray:
    """(n, height, width) float32 images from (n, h, w), (n, 1, h, w) or one (h, w) picture,
    checked: numbers in [0, 1] or 0-255, each with some ink."""
    x = as_numbers(model_input, "images")
    if x.ndim == 2:  # one picture
        x = x[None]
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise BadInput(f"expected images of shape (n, height, width) or (n, 1, height, width), got {list(x.shape)}")
    if min(x.shape[1:]) < MIN_SIDE:
        raise BadInput(
            f"images of {x.shape[1]}×{x.shape[2]} pixels: each side needs at least {MIN_SIDE} "
            "(a flattened batch (n, 784) is sent as (n, 28, 28))"
        )
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 255:
        raise BadInput(f"pixels must be in [0, 1] or 0-255, got values from {low:g} to {high:g}")
    contrast = x.reshape(len(x), -1).max(axis=1) - x.reshape(len(x), -1).min(axis=1)
    blank = contrast < MIN_CONTRAST * (255.0 if high > 1 else 1.0)
    if blank.any():  # the same answer for a blank image of any size
        raise BadInput(f"image {int(np.argmax(blank))} is blank (no ink found)")
    return x


def mnist_batch(model_input) -> np.ndarray:
    """(n, 1, 28, 28) float32 pixels in [0, 1] from any of the image inputs above."""
    x = image_batch(model_input)
    if x.shape[1:] == (MNIST_SIDE, MNIST_SIDE) and x.max(initial=0) <= 1:
        return x[:, None]
    from PIL import Image

    from nnlab.data.images import ImageError, to_mnist

    scale = 255.0 if x.max(initial=0) <= 1 else 1.0
    pictures = (Image.fromarray(np.clip(p * scale, 0, 255).astype(np.uint8), "L") for p in x)
    try:
        digits = [to_mnist(p, f"image {i}") for i, p in enumerate(pictures)]
    except ImageError as exc:
        raise BadInput(str(exc)) from None
    return np.stack(digits)[:, None].astype(np.float32)


def point_batch(model_input, features: int) -> np.ndarray:
    x = as_numbers(model_input, "points")
    if x.ndim != 2 or x.shape[1] != features:
        raise BadInput(f"expected points of shape (n, {features}), got {list(x.shape)}")
    return x


class Classifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of one nnlab network (see the module's docstring)."""

    def load_context(self, context) -> None:
        from nnlab.models.checkpoint import load_network

        self.net, cfg = load_network(context.artifacts["checkpoint"])
        self.images = "mean" in cfg.data
        self.mean, self.std = (float(cfg.data.mean), float(cfg.data.std)) if self.images else (0.0, 1.0)
        self.features = int(np.prod(cfg.data.input_shape))

    def predict(self, context, model_input: np.ndarray, params=None):  # the hint keeps MLflow quiet
        import pandas as pd
        import torch

        if self.images:
            x = (mnist_batch(model_input) - self.mean) / self.std
        else:
            x = point_batch(model_input, self.features)
        with torch.no_grad():
            logits = self.net(torch.from_numpy(np.ascontiguousarray(x))).double()
        probabilities = torch.softmax(logits, dim=1).numpy()
        return pd.DataFrame(
            {
                "label": logits.argmax(dim=1).numpy(),
                "probabilities": list(probabilities),
                "logits": list(logits.numpy()),
            }
        )


def signature():
    """The outputs only: an input schema would fix one rank, and the model takes images as
    (n, h, w) and (n, 1, h, w); it checks its inputs itself (``BadInput``)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    return ModelSignature(
        outputs=Schema(
            [
                ColSpec("long", "label"),
                ColSpec(Array("double"), "probabilities"),
                ColSpec(Array("double"), "logits"),
            ]
        )
    )


def log_classifier(
    run_id: str, checkpoint: Path, example: np.ndarray, requirements: list[str], name: str = "model", step: int = 0
):
    """Log the pyfunc model of ``checkpoint`` (weights and config only) as ``run_id``'s model
    ``name`` at ``step``; ``example``: two inputs as a user gives them."""
    import tempfile

    import nnlab
    from nnlab.models.checkpoint import network_only

    with tempfile.TemporaryDirectory() as tmp:
        network = network_only(checkpoint, Path(tmp) / "network.ckpt")
        return mlflow.models.Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=Classifier(),
            artifacts={"checkpoint": str(network)},
            code_paths=[str(Path(nnlab.__file__).parent)],
            signature=signature(),
            input_example=example,
            pip_requirements=requirements,
            step=step,
        )
