"""The logged MLflow model takes what a user has, and loads without nnlab; Lightning loggers beside
the MLflow record."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from nnlab.data.images import to_mnist
from nnlab.models.checkpoint import deployable, load_network
from nnlab.tracking.served_model import BadInput
from nnlab.train import train

from helpers import REPO, run_module, venv_env


def _picture(label: int, rng, size=(45, 60)) -> np.ndarray:
    """A raw grey picture (0-255, dark ink on light paper) of the synthetic digit ``label``."""
    from helpers import synthetic_digits

    images, labels = synthetic_digits(200, 2)
    digit = images[np.flatnonzero(labels == label)[0]]
    ink = Image.fromarray(255 - digit).resize(size[::-1], Image.BILINEAR)
    return np.clip(np.asarray(ink, dtype=np.float32) + rng.normal(0, 2, size).astype(np.float32), 0, 255)


def test_the_logged_model_takes_mnist_images_and_raw_pictures_of_any_size(compose, project, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    train(compose("experiment=mnist_linear", "name=served", "trainer.max_epochs=3"))
    run_id = json.loads((project / "models" / "served" / "run.json").read_text())["mlflow_run_id"]
    net, cfg = load_network(project / "models" / "served" / "best.ckpt")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/served")

    # 28x28 MNIST-style pixels in [0, 1]: the same logits as the checkpoint
    x = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    out = model.predict(x)
    with torch.no_grad():
        expected = deployable(net, cfg)(torch.from_numpy(x[:, None])).numpy()
    np.testing.assert_allclose(np.stack(out["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert list(out["label"]) == list(expected.argmax(1))
    probabilities = torch.softmax(torch.from_numpy(expected).double(), dim=1).numpy()
    np.testing.assert_allclose(np.stack(out["probabilities"]), probabilities, rtol=1e-5, atol=1e-6)
    # what a PyTorch user sends, (n, 1, 28, 28): the same answer
    np.testing.assert_array_equal(np.stack(model.predict(x[:, None])["logits"]), np.stack(out["logits"]))

    # raw pictures of another size (0-255, dark on light): MNIST's preprocessing inside the model
    rng = np.random.default_rng(1)
    pictures = np.stack([_picture(label, rng) for label in range(10)])
    labels = list(model.predict(pictures)["label"])
    prepared = np.stack([to_mnist(Image.fromarray(np.clip(p, 0, 255).astype(np.uint8), "L")) for p in pictures])
    with torch.no_grad():
        direct = deployable(net, cfg)(torch.from_numpy(prepared[:, None].astype(np.float32))).argmax(1).tolist()
    assert labels == direct

    # what is not a batch of images: one line saying so
    with pytest.raises(BadInput, match=r"^expected images of shape \(n, height, width\)"):
        model.predict(np.zeros((2, 3, 28, 28), np.float32))


def test_the_logged_model_loads_where_nnlab_is_not_installed(compose, project, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    train(compose("experiment=mnist_linear", "name=portable", "trainer.max_epochs=1"))
    run_id = json.loads((project / "models" / "portable" / "run.json").read_text())["mlflow_run_id"]
    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/portable", tracking_uri=uri, dst_path=str(tmp_path))
    script = f"""
import sys
sys.path = [p for p in sys.path if not p.startswith({str(REPO / "src")!r})]
import importlib.util
assert importlib.util.find_spec("nnlab") is None, "nnlab is still importable"
import numpy as np, mlflow.pyfunc
model = mlflow.pyfunc.load_model({local!r})
import nnlab
assert nnlab.__file__.startswith({local!r}), nnlab.__file__
print(list(model.predict(np.random.default_rng(0).random((2, 28, 28), np.float32))["label"]))
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
    runs = client.search_runs([client.get_experiment_by_name("nnlab-blobs").experiment_id])
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, payload: dict) -> tuple[int, dict, int]:
    """(HTTP status, JSON body, body size) of one JSON request to the scoring server."""
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
            return response.status, json.loads(body), len(body)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body), len(body)


@pytest.fixture
def scoring_server(compose, project, tmp_path, monkeypatch):
    """`mlflow models serve` of a trained MNIST model on a free loopback port: its /invocations."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    train(compose("experiment=mnist_linear", "name=http", "trainer.max_epochs=1"))
    run_id = json.loads((project / "models" / "http" / "run.json").read_text())["mlflow_run_id"]
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/http"]
        + ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=venv_env(MLFLOW_TRACKING_URI=uri),
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "mlflow models serve did not answer within 180 s"
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield f"{url}/invocations"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_served_model_answers_each_bad_request_with_one_short_reason(scoring_server):
    """Real HTTP requests: labels, probabilities and logits; (n, 1, 28, 28) as well as (n, 28, 28);
    a bad request gets HTTP 400 and one short reason, the same at any image size."""
    images = np.random.default_rng(0).random((2, 28, 28), dtype=np.float32)
    status, body, _ = _post(scoring_server, {"inputs": images.tolist()})
    assert status == 200, body
    answers = body["predictions"]
    assert [sorted(a) for a in answers] == [["label", "logits", "probabilities"]] * 2
    assert all(a["label"] == int(np.argmax(a["logits"])) for a in answers)
    assert all(abs(sum(a["probabilities"]) - 1) < 1e-6 for a in answers)
    assert _post(scoring_server, {"inputs": images[:, None].tolist()})[:2] == (200, body)

    nan, negative = images.copy(), images.copy()
    nan[1, 3, 3] = np.nan
    negative[0, 5, 5] = -1
    bad = [
        (nan, "image 1 has NaN or infinite values"),
        (np.zeros((1, 28, 28)), "image 0 is blank (no ink found)"),
        (np.zeros((1, 60, 45)), "image 0 is blank (no ink found)"),
        (np.full((3, 100, 100), 255.0), "image 0 is blank (no ink found)"),
        (
            images.reshape(2, 784),
            "images of 2×784 pixels: each side needs at least 8 (a flattened batch (n, 784) is sent as (n, 28, 28))",
        ),
        (negative, f"pixels must be in [0, 1] or 0-255, got values from -1 to {float(images.max()):g}"),
    ]
    for inputs, reason in bad:
        status, answer, size = _post(scoring_server, {"inputs": inputs.tolist()})
        assert (status, answer.get("message")) == (400, reason), answer
        assert "stack_trace" not in answer and size < 400, answer
