"""The logged MLflow model takes what a user has, and loads without nnlab; Lightning loggers beside
the MLflow record."""

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from nnlab.data.images import to_mnist
from nnlab.models.checkpoint import deployable, load_network
from nnlab.train import train

from helpers import REPO, run_module


def _picture(label: int, rng, size=(45, 60)) -> np.ndarray:
    """A raw grey picture (0-255, dark ink on light paper) of the synthetic digit ``label``."""
    from helpers import synthetic_digits

    images, labels = synthetic_digits(200, 2)
    digit = images[np.flatnonzero(labels == label)[0]]
    ink = Image.fromarray(255 - digit).resize(size[::-1], Image.BILINEAR)
    return np.asarray(ink, dtype=np.float32) + rng.normal(0, 2, size).astype(np.float32)


def test_the_logged_model_takes_mnist_images_and_raw_pictures_of_any_size(compose, project, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    train(compose("experiment=mnist_linear", "name=served", "trainer.max_epochs=3"))
    run_id = json.loads((project / "models" / "served" / "run.json").read_text())["mlflow_run_id"]
    net, cfg = load_network(project / "models" / "served" / "best.ckpt")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")

    # 28x28 MNIST-style pixels in [0, 1]: the same logits as the checkpoint
    x = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    out = model.predict(x)
    with torch.no_grad():
        expected = deployable(net, cfg)(torch.from_numpy(x[:, None])).numpy()
    np.testing.assert_allclose(np.stack(out["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert list(out["label"]) == list(expected.argmax(1))

    # raw pictures of another size (0-255, dark on light): MNIST's preprocessing inside the model
    rng = np.random.default_rng(1)
    pictures = np.stack([_picture(label, rng) for label in range(10)])
    labels = list(model.predict(pictures)["label"])
    prepared = np.stack([to_mnist(Image.fromarray(np.clip(p, 0, 255).astype(np.uint8), "L")) for p in pictures])
    with torch.no_grad():
        direct = deployable(net, cfg)(torch.from_numpy(prepared[:, None].astype(np.float32))).argmax(1).tolist()
    assert labels == direct

    # MLflow's schema check rejects what is not a batch of 2-D images, in one message
    with pytest.raises(Exception, match="shape"):
        model.predict(np.zeros((2, 784), np.float32))


def test_the_logged_model_loads_where_nnlab_is_not_installed(compose, project, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    train(compose("experiment=mnist_linear", "name=portable", "trainer.max_epochs=1"))
    run_id = json.loads((project / "models" / "portable" / "run.json").read_text())["mlflow_run_id"]
    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", tracking_uri=uri, dst_path=str(tmp_path))
    script = f"""
import sys
sys.path = [p for p in sys.path if not p.startswith({str(REPO / "src")!r})]
import importlib.util
assert importlib.util.find_spec("nnlab") is None, "nnlab is still importable"
import numpy as np, mlflow.pyfunc
model = mlflow.pyfunc.load_model({local!r})
import nnlab
assert nnlab.__file__.startswith({local!r}), nnlab.__file__
print(list(model.predict(np.zeros((2, 28, 28), np.float32))["label"]))
"""
    # the editable install is a path in a .pth file: without it nnlab can only come from code/
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.loads(proc.stdout.strip().splitlines()[-1])) == 2


def test_lightning_loggers_write_beside_the_single_mlflow_run(compose, project, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = compose(
        "experiment=blobs_linear",
        "name=loggers",
        "trainer.max_epochs=3",
        "+logger/lightning=[csv,tensorboard,dvclive]",
        "outputs=run",
    )
    train(cfg)
    (folder,) = (project / "logs" / "runs" / "loggers").iterdir()
    rows = (folder / "csv" / "metrics.csv").read_text().splitlines()
    assert "epoch" in rows[0] and len([r for r in rows[1:] if r]) >= 3
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((folder / "dvclive" / "metrics.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("nnlab").experiment_id])
    assert [r.info.run_name for r in runs] == ["loggers"]  # no second run from a logger


def test_an_mlflow_lightning_logger_is_refused_in_one_line(project):
    proc = run_module(
        "nnlab.train",
        "experiment=blobs_linear",
        "+logger.lightning.mlf={_target_: lightning.pytorch.loggers.MLFlowLogger}",
        cwd=project,
        NNLAB_ROOT=str(project),
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("nnlab.train: error: config: logger.lightning.mlf._target_: must be one of ")
    assert "would duplicate the run" in line


def test_requirements_are_checked_by_version_without_scanning_every_distribution(monkeypatch):
    """Logging or loading a model checks its requirements against the installed versions: the same
    answers inside requirement_check_without_scan, without MLflow's scan of every distribution."""
    from mlflow.utils import requirements_utils as checks

    from nnlab.tracking.served_model import requirement_check_without_scan

    scans = []
    real_scan = checks.importlib_metadata.packages_distributions
    monkeypatch.setattr(checks.importlib_metadata, "packages_distributions", lambda: scans.append(1) or real_scan())
    monkeypatch.setattr(checks, "_MODULES_TO_PACKAGES", None)
    requirements = (f"numpy=={np.__version__}", "numpy==0.0.1", "nnlab-no-such-package==1.0")

    with requirement_check_without_scan():
        quick = [checks._check_requirement_satisfied(r) for r in requirements]
    assert scans == [] and checks._MODULES_TO_PACKAGES is None
    scanned = [checks._check_requirement_satisfied(r) for r in requirements]
    assert scans == [1]
    assert quick == scanned
    assert quick[0] is None
    assert (quick[1].installed_version, quick[1].requirement) == (np.__version__, "numpy==0.0.1")
    assert quick[2].installed_version is None
