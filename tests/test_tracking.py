"""MLflow records checked through MlflowClient: a SQLite store and a real `mlflow server`."""

import getpass
import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from nnlab.tracking.run import flatten, open_run, store_lock
from nnlab.train import train

from helpers import REPO, ctrl_c_raises, run_module, venv_env

EPOCH_METRICS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_seconds",
    "epoch_train_seconds",
    "samples_per_second",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow tracking server on a free loopback port."""
    folder = tmp_path_factory.mktemp("server")
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=venv_env(),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read().strip() == b"OK":
                break
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    else:
        proc.kill()
        pytest.fail("mlflow server did not answer within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(params=["sqlite", "server"])
def store(request, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if request.param == "sqlite" else request.getfixturevalue("server")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # takes precedence over the config
    return uri


def _git_init(root):
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"],
    ):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)


def test_a_run_records_everything(compose, project, store, monkeypatch):
    _git_init(project)
    monkeypatch.setenv("DVC_STAGE", "train@smoke")
    name = f"record_{store[:4]}"
    summary = train(
        compose(
            "experiment=mnist_mlp",
            f"name={name}",
            "trainer.max_epochs=2",
            "logger.mlflow.tracking_uri=sqlite:////nonexistent/ignored.db",
        ),
        overrides=["trainer.max_epochs=2"],
    )
    client = MlflowClient(tracking_uri=store)
    run = client.search_runs(
        [client.get_experiment_by_name("nnlab-mnist").experiment_id], filter_string=f"attributes.run_name = '{name}'"
    )[0]
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    train_json = json.loads((project / "metrics" / name / "train.json").read_text())
    # one name, one meaning: a metric is logged once per epoch (steps 1..N) or once (step 0)
    histories = {key: client.get_metric_history(run.info.run_id, key) for key in metrics}
    for key, history in histories.items():
        if key.startswith("system/"):
            continue
        steps = sorted(m.step for m in history)
        assert steps in ([1, 2], [0]), (key, steps)
        assert (steps == [1, 2]) == (key in EPOCH_METRICS), key
    assert metrics["train_seconds"] == pytest.approx(train_json["train_seconds"])  # the whole run's
    assert sum(m.value for m in histories["epoch_train_seconds"]) <= train_json["train_seconds"]
    assert metrics["best_val_acc"] == pytest.approx(train_json["best_val_acc"])
    folder = project / "data" / "mnist"  # the data's own bytes, not only its manifest
    digest = hashlib.md5()
    for path in sorted([*(folder / "raw").iterdir(), folder / "split.npz"], key=lambda p: str(p.relative_to(folder))):
        rel = path.relative_to(folder).as_posix().encode()
        digest.update(rel + b"\0" + path.stat().st_size.to_bytes(8, "big") + path.read_bytes())
    manifest_md5 = digest.hexdigest()
    assert {k: tags[k] for k in ("experiment", "data", "model", "data_md5", "accelerator", "dvc_stage")} == {
        "experiment": name,
        "data": "mnist",
        "model": "MLP",
        "data_md5": manifest_md5,
        "accelerator": "cpu",
        "dvc_stage": "train@smoke",
    }
    assert len(tags["git_commit"]) == 40 and tags["git_dirty"] in ("True", "False") and tags["device"]
    assert params["model.class"] == "MLP" and params["model.hidden_sizes"] == "[128, 64]"
    assert params["parameters"] == "109386" and params["trainer.max_epochs"] == "2"
    assert not [k for k in params if "_target_" in k or "_partial_" in k]
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    assert metrics["test_acc"] == pytest.approx(summary["test_acc"])
    assert all(f"test_acc_class_{c}" in metrics for c in range(10))

    def listing(path=None):
        return {a.path for a in client.list_artifacts(run.info.run_id, path)}

    assert {
        "config.yaml",
        "overrides.txt",
        "model_summary.txt",
        "history.csv",
        "curves.png",
        "train.json",
        "checkpoint",
        "evaluation",
    } <= listing()
    assert listing("checkpoint") == {"checkpoint/best.ckpt"}
    assert {"evaluation/confusion.png", "evaluation/predictions.png", "evaluation/test.json"} <= listing("evaluation")
    summary_text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/model_summary.txt")
    assert "Total params: 109,386" in summary_text and "(None, 128)" in summary_text

    # MLflow's own columns: User, Source, Version
    assert tags["mlflow.source.name"] == "nnlab.train" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"] == getpass.getuser() and tags["mlflow.source.git.commit"] == tags["git_commit"]
    # params a person compares, and the config beside them: no machine paths
    assert params["data.data_dir"] == "data/mnist" and params["paths.root_dir"] == "."
    assert not [k for k, v in params.items() if str(project) in v]
    config = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
    assert "data_dir: data/mnist" in config and str(project) not in config
    # system metrics, sampled every 0.5 s here (conftest), from the first step
    system = {k for k in metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
    assert metrics["system/system_memory_usage_megabytes"] > 0
    # datasets: training and validation at the start, the test set with the test results
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"mnist-train", "mnist-val", "mnist-test"}
    contexts = {n: {t.value for t in i.tags if t.key == "mlflow.data.context"} for n, i in inputs.items()}
    assert contexts == {"mnist-train": {"training"}, "mnist-val": {"validation"}, "mnist-test": {"testing"}}
    sizes = {n: json.loads(i.dataset.profile)["targets_shape"][0] for n, i in inputs.items()}
    assert sizes == {"mnist-train": 500, "mnist-val": 100, "mnist-test": 200}
    assert len({i.dataset.digest for i in inputs.values()}) == 3
    assert (project / "data" / "mnist").as_uri() in inputs["mnist-train"].dataset.source
    # the logged model: named after the experiment, with its outputs' schema; on its page the
    # test metrics for the test set and nothing else (no system metrics, no per-class accuracies)
    (output,) = run.outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert logged.name == name
    linked = {m.key: m for m in logged.metrics}
    assert set(linked) == {"test_acc", "test_loss"}
    assert linked["test_acc"].value == pytest.approx(summary["test_acc"])
    assert (linked["test_acc"].dataset_name, linked["test_acc"].dataset_digest) == (
        "mnist-test",
        inputs["mnist-test"].dataset.digest,
    )

    mlflow.set_tracking_uri(store)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/{name}")
    outputs = [(c.name, str(c.type)) for c in model.metadata.get_output_schema().inputs]
    assert [n for n, _ in outputs] == ["label", "probabilities", "logits"]
    images = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    predicted = model.predict(images)
    assert np.stack(predicted["logits"]).shape == (3, 10) and list(predicted["label"]) == list(
        np.stack(predicted["logits"]).argmax(1)
    )
    np.testing.assert_allclose(np.stack(predicted["probabilities"]).sum(axis=1), 1.0, rtol=1e-6)


def test_registered_model_champion_is_the_best_test_accuracy(compose, project, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    registered = ("experiment=mnist_linear", "logger.mlflow.register=true")
    weak = train(compose(*registered, "trainer.max_epochs=1", "optimizer.lr=1e-5"))
    strong = train(compose(*registered, "trainer.max_epochs=3"))
    assert strong["test_acc"] > weak["test_acc"]
    client = MlflowClient(tracking_uri=uri)
    champion = client.get_model_version_by_alias("nnlab-mnist_linear", "champion")
    assert int(champion.version) == 2
    assert client.get_run(champion.run_id).data.metrics["test_acc"] == pytest.approx(strong["test_acc"])
    # a third, weaker version does not take the alias
    train(compose(*registered, "trainer.max_epochs=1", "optimizer.lr=1e-5"))
    assert client.get_model_version_by_alias("nnlab-mnist_linear", "champion").version == 2
    # described for the registry: the network and data, each version's recipe and test accuracy
    weakest = client.get_model_version("nnlab-mnist_linear", 3)
    assert weakest.description.startswith("Recipe: Adam lr 1e-05, batch 128, 1 epoch, OneCycleLR, seed 42.")
    assert f"Test accuracy {100 * weak['test_acc']:.2f}% on mnist-test." in weakest.description
    about = client.get_registered_model("nnlab-mnist_linear").description
    assert about.startswith("nnlab experiment mnist_linear: LinearClassifier trained on mnist (10 classes).")
    assert "returns label, probabilities and logits" in about
    assert "@champion: version 2. Recipe: Adam lr 0.003, batch 128, 3 epochs," in about
    assert f"Test accuracy {100 * strong['test_acc']:.2f}%" in about


def test_failed_and_interrupted_runs_are_never_left_running(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    with pytest.raises(ZeroDivisionError), open_run("nnlab", "crash", tmp_path, uri) as run:
        _ = 1 / 0
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert client.get_run(run.run_id).data.tags["error"] == "ZeroDivisionError: division by zero"
    with pytest.raises(KeyboardInterrupt), open_run("nnlab", "ctrl-c", tmp_path, uri) as run:
        raise KeyboardInterrupt
    assert client.get_run(run.run_id).info.status == "KILLED"


def test_ctrl_c_during_training_ends_the_run_killed(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nnlab.train",
            "experiment=blobs_linear",
            "trainer.max_epochs=100000",
            "trainer=cpu",
            "trainer.enable_progress_bar=false",
            f"logger.mlflow.tracking_uri={uri}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=venv_env(NNLAB_ROOT=str(project)),
        cwd=REPO,
        preexec_fn=ctrl_c_raises,
    )
    deadline = time.time() + 120
    client = run = None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        if client is None:
            if not (tmp_path / "mlflow.db").exists():
                continue
            # A client creates and migrates a new store as it is built: built as nnlab's own
            # processes build theirs, never while the training creates the tables (a second
            # process migrating the same new SQLite file can lock the training out).
            with store_lock(uri):
                client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("nnlab-blobs")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and client.get_metric_history(runs[0].info.run_id, "val_acc"):
            run = runs[0]
            break
    assert run is not None, "training never logged an epoch"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-4000:]
    assert stderr.strip().splitlines()[-1] == "nnlab.train: error: interrupted; the MLflow run is marked KILLED"
    assert client.get_run(run.info.run_id).info.status == "KILLED"


@pytest.mark.parametrize("where", ["sqlite", "server"])
def test_parallel_sweep_jobs_all_complete(project, tmp_path, request, where):
    """4 jobs at once through the joblib launcher, into a store nobody created beforehand."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if where == "sqlite" else request.getfixturevalue("server")
    result = run_module(
        "nnlab.train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "experiment=blobs_linear",
        f"name=parallel_{where}",
        "optimizer.lr=0.01,0.02,0.05,0.1",
        "trainer.max_epochs=2",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "logger.mlflow.log_model=false",
        cwd=REPO,
        timeout=600,
        NNLAB_ROOT=str(project),
        MLFLOW_TRACKING_URI=uri,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "database is locked" not in result.stderr
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("nnlab-blobs").experiment_id],
        filter_string=f"tags.experiment = 'parallel_{where}'",
    )
    parent = next(r for r in runs if r.data.tags.get("sweep") == "parent")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    assert sorted(r.data.params["optimizer.lr"] for r in children) == ["0.01", "0.02", "0.05", "0.1"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert len(client.get_metric_history(child.info.run_id, "val_acc")) == 2
        assert "test_acc" in child.data.metrics
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs"] == "4"


def test_flatten_drops_hydra_noise_and_caps_length():
    flat = flatten({"model": {"_target_": "a.b.MLP", "_partial_": True, "sizes": [1, 2]}, "note": "x" * 9000})
    assert flat == {"model.class": "MLP", "model.sizes": "[1, 2]", "note": "x" * 6000}


def test_credentials_in_the_tracking_uri_reach_no_file_param_or_artifact(project, server, tmp_path):
    """`user:secret@` in the URI goes to MLFLOW_TRACKING_USERNAME/PASSWORD; nothing written keeps it."""
    secret = "s3cretPassw0rd"
    uri = server.replace("http://", f"http://alice:{secret}@")
    proc = run_module(
        "nnlab.train",
        "experiment=blobs_linear",
        "name=cred",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        f"logger.mlflow.tracking_uri={uri}",
        cwd=project,
        NNLAB_ROOT=str(project),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = [p for p in project.rglob("*") if p.is_file() and "data" not in p.relative_to(project).parts[:1]]
    assert any(p.name == "best.ckpt" for p in written) and any(p.name == "overrides.yaml" for p in written)
    assert [p for p in written if secret.encode() in p.read_bytes()] == []
    client = MlflowClient(tracking_uri=server)
    run = client.search_runs(
        [client.get_experiment_by_name("nnlab-blobs").experiment_id], filter_string="attributes.run_name = 'cred'"
    )[0]
    assert run.data.params["logger.mlflow.tracking_uri"] == server
    assert secret not in str(run.data.tags)
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, tracking_uri=server, dst_path=str(tmp_path))
    files = [p for p in Path(local).rglob("*") if p.is_file()]
    assert any(p.name == "overrides.txt" for p in files) and any(p.suffix == ".ckpt" for p in files)
    assert [p for p in files if secret.encode() in p.read_bytes()] == []


def test_make_ui_prints_each_experiments_runs_table_and_serve_names_a_missing_model(project, tmp_path):
    """`make ui` prints the addresses that open the training runs (not MLflow 3's GenAI overview);
    `make serve` of a model nobody registered stops with one line saying how to register it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with open_run("nnlab-blobs", "one", project, uri):
        pass
    urls = run_module("nnlab.tracking.ui", "urls", "--port", "5055", cwd=project, MLFLOW_TRACKING_URI=uri)
    assert urls.returncode == 0, urls.stderr[-2000:]
    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name("nnlab-blobs").experiment_id
    assert urls.stdout.splitlines() == [
        f"  nnlab-blobs: http://127.0.0.1:5055/#/experiments/{experiment}/runs?workflowType=machine_learning"
    ]
    missing = run_module(
        "nnlab.tracking.ui", "check-model", "models:/nnlab-mnist_cnn@champion", cwd=project, MLFLOW_TRACKING_URI=uri
    )
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [
        f"nnlab.tracking.ui: error: models:/nnlab-mnist_cnn@champion is not registered in tracking store {uri}: "
        "register it with `dvc repro` (its evaluate stages register every model) or `python -m nnlab.evaluate "
        "experiment=mnist_cnn logger.mlflow.register=true`, or serve another one "
        "(make serve SERVE_MODEL=models:/<name>@<alias>)"
    ]
