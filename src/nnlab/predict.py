"""Classify image files with a trained model: ``python -m nnlab.predict --model M IMAGE...``.

MODEL is a checkpoint written by nnlab (``models/<name>/best.ckpt``) or an MLflow model URI
(``runs:/<run_id>/<experiment name>``, ``models:/<name>@<alias>``). Each image is preprocessed like MNIST
(see nnlab.data.images). Exit status: 0 all classified, 1 some file failed, 2 bad model or usage.

Trust: an nnlab checkpoint is data only (tensors and a checked config; nothing in it is imported
or run). An MLflow model is code: loading it unpickles and runs what its folder holds. Models of
the tracking store (runs:/, models:/) are loaded as such; any other MLflow model (a local folder,
file://, another scheme) only with --trust-model-code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from nnlab.data.images import ImageError, load_digit
from nnlab.errors import NnlabError, first_line
from nnlab.models.activations import softmax

PROG = "nnlab.predict"
INPUT_SHAPE = (1, 28, 28)
MLFLOW_SCHEMES = ("runs:/", "models:/")  # the tracking store's models: trusted as its code

Predictor = Callable[[np.ndarray], np.ndarray]  # float32 (n, 1, 28, 28) in [0, 1] -> logits (n, k)


class ModelError(NnlabError, RuntimeError):
    """A model that cannot be loaded or does not take 28×28 images."""


def is_mlflow_uri(spec: str) -> bool:
    return spec.startswith(MLFLOW_SCHEMES) or "://" in spec


def needs_trust(spec: str) -> bool:
    """Whether loading ``spec`` would run code that is not the tracking store's: an MLflow model
    folder given by path (one with an MLmodel file) or by a URI other than runs:/ and models:/."""
    return not spec.startswith(MLFLOW_SCHEMES) and ("://" in spec or (Path(spec) / "MLmodel").is_file())


def _from_checkpoint(path: str) -> Predictor:
    import torch

    from nnlab.models.checkpoint import deployable, load_network

    net, cfg = load_network(path)
    shape = tuple(cfg.data.get("input_shape") or ())
    if shape != INPUT_SHAPE:
        raise ModelError(f"{path} takes inputs of shape {list(shape)}, not {list(INPUT_SHAPE)} images")
    model = deployable(net, cfg)

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return predict


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """No download progress bars and no environment-mismatch warnings while a model loads."""
    logger, var = logging.getLogger("mlflow"), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    level, bar = logger.level, os.environ.get(var)
    logger.setLevel(logging.ERROR)
    os.environ[var] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = bar


def _from_mlflow(uri: str) -> Predictor:
    import mlflow

    from nnlab.config.paths import find_root
    from nnlab.tracking.run import check_reachable, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(None, find_root())
    check_reachable(tracking_uri)  # a server that is down: one line now, not minutes of retries
    mlflow.set_tracking_uri(tracking_uri)
    with _quiet_mlflow():  # suppress_warnings: no check of the model's requirements (a scan of every package)
        model = mlflow.pyfunc.load_model(uri, suppress_warnings=True)
    _check_schema(uri, model.metadata.get_input_schema())

    def predict(x: np.ndarray) -> np.ndarray:
        output = model.predict(x[:, 0])  # nnlab's logged model takes (n, height, width) images
        return np.stack(output["logits"]) if hasattr(output, "columns") else np.asarray(output, dtype=np.float64)

    return predict


def _check_schema(uri: str, schema) -> None:
    """Refuse a logged model whose signature takes something other than (n, height, width)
    images (no signature: trust it)."""
    shape = getattr(schema.inputs[0], "shape", None) if schema is not None and schema.inputs else None
    if shape is not None and (len(shape) != 3 or any(s not in (-1, 28) for s in shape[1:])):
        raise ModelError(f"{uri} takes inputs of shape {list(shape)}, not [n, height, width] images")


def load_model(spec: str, trust_code: bool = False) -> Predictor:
    """A function from images to logits, or ModelError with a one-line reason. An MLflow model
    outside the tracking store (a folder, file://) runs its own code: only with ``trust_code``."""
    if needs_trust(spec) and not trust_code:
        raise ModelError(
            f"{spec} is an MLflow model folder: loading it runs the code it holds (pickles); "
            "pass --trust-model-code if you trust its author, or give an nnlab checkpoint (.ckpt, data only)"
        )
    try:
        if needs_trust(spec) and "://" not in spec:
            spec = Path(spec).resolve().as_uri()
        return _from_mlflow(spec) if is_mlflow_uri(spec) else _from_checkpoint(spec)
    except ModelError:
        raise
    except Exception as exc:
        reason = first_line(exc)  # where it names the model already, it is the whole line
        raise ModelError(reason if spec in reason else f"cannot load model {spec}: {reason}") from exc


def _call(predict: Predictor, batch: np.ndarray) -> np.ndarray:
    try:
        logits = np.asarray(predict(batch), dtype=np.float64)
    except Exception as exc:
        raise ModelError(f"the model failed on {list(batch.shape)} images: {first_line(exc)}") from exc
    if logits.ndim != 2 or len(logits) != len(batch):
        raise ModelError(f"the model returned shape {list(logits.shape)}, not ({len(batch)}, classes) logits")
    if not np.isfinite(logits).all():  # softmax of NaN: label 0 with probability "nan"
        raise ModelError("the model returned NaN or infinite logits: its weights are broken (a diverged training?)")
    return logits


def logits_of(predict: Predictor, batch: np.ndarray) -> np.ndarray:
    """The model's (n, classes) logits, one image at a time if the batch fails: a model exported
    by torch.export from a one-row input example only takes batches of one."""
    try:
        return _call(predict, batch)
    except ModelError:
        if len(batch) == 1:
            raise
        return np.concatenate([_call(predict, batch[i : i + 1]) for i in range(len(batch))])


def top_k(probabilities: np.ndarray, k: int) -> list[dict]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": int(c), "probability": float(probabilities[c])} for c in order]


def classify(predict: Predictor, files: list[str], k: int, max_bytes: int, max_pixels: int) -> list[dict]:
    """One result per file, in order: {"file", "label", "top"} or {"file", "error"}."""
    results: list[dict] = []
    images = []
    for name in files:
        try:
            images.append(load_digit(name, max_bytes=max_bytes, max_pixels=max_pixels))
            results.append({"file": name})
        except ImageError as exc:
            results.append({"file": name, "error": exc.reason})
    if images:
        batch = np.stack(images)[:, None].astype(np.float32)
        probabilities = softmax(logits_of(predict, batch))
        good = (r for r in results if "error" not in r)
        for result, row in zip(good, probabilities, strict=True):
            result["top"] = top_k(row, k)
            result["label"] = result["top"][0]["label"]
    return results


def _human(result: dict) -> str:
    top = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in result["top"])
    return f"{result['file']}: {result['label']}  ({top})"


def _report(results: list[dict], as_json: bool) -> None:
    for result in results:
        if "error" in result:
            print(f"{result['file']}: error: {result['error']}", file=sys.stderr)
    if as_json:
        ordered = [r if "error" in r else {"file": r["file"], "label": r["label"], "top": r["top"]} for r in results]
        print(json.dumps(ordered, indent=2))
    else:
        for result in results:
            if "error" not in result:
                print(_human(result))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        required=True,
        help="an nnlab .ckpt (data only: nothing in it runs), or an MLflow model, which is code that "
        "runs when it loads: runs:/<id>/<experiment name> or models:/<name>@<alias> from the tracking store, "
        "a local folder or file:// URI only with --trust-model-code",
    )
    parser.add_argument(
        "--trust-model-code",
        action="store_true",
        help="allow --model to be an MLflow model folder (or file:// URI): loading it runs its code",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of one line per file")
    parser.add_argument("--top", type=_positive, default=3, help="how many classes to list (default 3)")
    parser.add_argument("--max-bytes", type=_positive, default=20_000_000, help="largest file accepted")
    parser.add_argument("--max-pixels", type=_positive, default=40_000_000, help="largest image accepted")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        predict = load_model(args.model, args.trust_model_code)
        results = classify(predict, args.images, args.top, args.max_bytes, args.max_pixels)
    except ModelError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    _report(results, args.json)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    from nnlab.config.process import exit_now  # no second of torch's teardown after the answer

    exit_now(main())
