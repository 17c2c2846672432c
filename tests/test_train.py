import csv
import json

import pytest
from mlflow.tracking import MlflowClient

from nnlab.evaluate import evaluate
from nnlab.models.checkpoint import load_network
from nnlab.train import train

from helpers import REPO, run_module


def _store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _runs(uri: str):
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]  # one per data set: nnlab-<data>
    return client, client.search_runs(experiments)


@pytest.mark.parametrize("model", ["linear", "mlp", "cnn"])
def test_training_smoke_writes_outputs_and_tracks_the_run(compose, project, tmp_path, model):
    uri = _store(tmp_path)
    cfg = compose(
        "data=mnist",
        f"model={model}",
        f"name=smoke_{model}",
        "optimizer.lr=0.003",
        "trainer.max_epochs=3",
        f"logger.mlflow.tracking_uri={uri}",
    )
    summary = train(cfg)

    assert summary["epochs"] == 3 and summary["test_acc"] > 0.8  # chance is 0.1
    assert (project / "models" / f"smoke_{model}" / "best.ckpt").is_file()
    assert json.loads((project / "metrics" / f"smoke_{model}" / "train.json").read_text())["parameters"] > 0
    with (project / "plots" / f"smoke_{model}" / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["epoch_seconds"]) > 0 and float(r["samples_per_second"]) > 0 for r in rows)

    client, runs = _runs(uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == f"smoke_{model}"
    assert run.data.params["optimizer.lr"] == "0.003"
    assert run.data.params["parameters"] == str(summary["parameters"])
    assert not any("_target_" in key for key in run.data.params)
    assert run.data.tags["experiment"] == f"smoke_{model}" and run.data.tags["data"] == "mnist"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2, 3]
    assert run.data.metrics["test_acc"] == pytest.approx(summary["test_acc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "history.csv", "curves.png", "train.json", "checkpoint"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/best.ckpt"]


def test_checkpoint_restores_into_the_same_network_and_evaluate_agrees(compose, project, tmp_path):
    uri = _store(tmp_path)
    cfg = compose("experiment=mnist_mlp", "trainer.max_epochs=2", f"logger.mlflow.tracking_uri={uri}")
    summary = train(cfg)
    net, saved_cfg = load_network(project / "models" / "mnist_mlp" / "best.ckpt")
    assert saved_cfg.model.hidden_sizes == [128, 64]
    assert sum(p.numel() for p in net.parameters()) == summary["parameters"]

    metrics = evaluate(cfg)
    assert metrics["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-6)
    assert set(metrics["per_class_accuracy"]) == {str(c) for c in range(10)}
    with (project / "plots" / "mnist_mlp" / "confusion.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 200 and set(rows[0]) == {"actual", "predicted"}
    correct = sum(r["actual"] == r["predicted"] for r in rows) / len(rows)
    assert correct == pytest.approx(metrics["test_acc"])
    for png in ("confusion.png", "predictions.png"):
        assert (project / "plots" / "mnist_mlp" / png).read_bytes()[:4] == b"\x89PNG"
    client, runs = _runs(uri)
    assert runs[0].data.metrics["test_acc_class_3"] == metrics["per_class_accuracy"]["3"]
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "evaluation")} >= {
        "evaluation/confusion.png",
        "evaluation/predictions.png",
        "evaluation/test.json",
    }


def test_blobs_linear_reaches_full_validation_accuracy(compose, project):
    summary = train(compose("experiment=blobs_linear", "logger=none"))
    assert summary["best_val_acc"] == 1.0 and summary["test_acc"] == 1.0


def test_same_seed_same_metrics(compose, project):
    first = train(compose("experiment=mnist_cnn", "model.channels=[8,16]", "trainer.max_epochs=2", "logger=none"))
    second = train(compose("experiment=mnist_cnn", "model.channels=[8,16]", "trainer.max_epochs=2", "logger=none"))
    for key in ("best_val_acc", "best_val_loss", "test_acc", "test_loss"):
        assert first[key] == second[key], key


def test_a_crashing_run_ends_failed_with_the_error(compose, project, tmp_path):
    uri = _store(tmp_path)
    cfg = compose(
        "data=mnist", "model=linear", "data.num_classes=5", "model.num_classes=5", f"logger.mlflow.tracking_uri={uri}"
    )
    with pytest.raises(Exception, match="data.num_classes=5 does not match the data"):
        train(cfg)
    _, runs = _runs(uri)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "data.num_classes=5 does not match the data" in runs[0].data.tags["error"]


def test_missing_data_is_one_line_before_any_run_starts(project, tmp_path):
    uri = _store(tmp_path)
    proc = run_module(
        "nnlab.train",
        "data=mnist",
        "model=linear",
        "trainer=cpu",
        "data.data_dir=/nonexistent/mnist",
        f"logger.mlflow.tracking_uri={uri}",
        cwd=project,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("nnlab.train: error: /nonexistent/mnist: no prepared MNIST")
    assert _runs(uri)[1] == []


def test_multirun_sweep_is_one_parent_run_with_a_child_per_job(project, tmp_path):
    uri = _store(tmp_path)
    result = run_module(
        "nnlab.train",
        "-m",
        "experiment=blobs_linear",
        "optimizer.lr=0.001,0.1",
        "trainer.max_epochs=3",
        "trainer=cpu",
        "logger.mlflow.log_model=false",
        f"logger.mlflow.tracking_uri={uri}",
        cwd=REPO,
        NNLAB_ROOT=str(project),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    _, runs = _runs(uri)
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["optimizer.lr"] for r in children) == ["0.001", "0.1"]
    assert sorted(r.data.tags["sweep_job"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    best = max(children, key=lambda r: r.data.metrics["best_val_acc"])
    assert parent.data.tags["best_child"] == best.info.run_id
    assert parent.data.metrics["best_child_val_acc"] == best.data.metrics["best_val_acc"]
    assert "optimizer.lr=0.001,0.1" in parent.data.params["sweep_overrides"]
    # sweep jobs write into their own folders, not over the canonical outputs
    assert not (project / "models" / "blobs_linear").exists()
    assert len(list((project / "logs" / "multirun").rglob("best.ckpt"))) == 2


def _ddp_training(project, *overrides: str) -> str:
    """A training on two CPU processes that must succeed; its output, both streams."""
    result = run_module(
        "nnlab.train",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.enable_progress_bar=false",
        *overrides,
        cwd=REPO,
        NNLAB_ROOT=str(project),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    return output


def test_ddp_on_two_cpu_processes_tracks_one_run(project, tmp_path):
    uri = _store(tmp_path)
    _ddp_training(
        project,
        "experiment=blobs_linear",
        "trainer.max_epochs=3",
        "logger.mlflow.log_model=false",
        f"logger.mlflow.tracking_uri={uri}",
    )
    client, runs = _runs(uri)
    assert [r.info.status for r in runs] == ["FINISHED"]  # rank 0 alone records
    assert len(client.get_metric_history(runs[0].info.run_id, "val_acc")) == 3
    assert runs[0].data.metrics["test_acc"] == 1.0


def test_ddp_buckets_the_gradients_of_a_channels_last_cnn_in_their_layout(project):
    # The module turns a CNN channels-last before DDP wraps it; turned afterwards, every step
    # copies each convolution's gradient into a bucket of the other layout, with a warning.
    output = _ddp_training(
        project,
        "experiment=mnist_cnn",
        "model.channels=[4,8]",
        "model.hidden_size=16",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "logger=none",
    )
    assert "Grad strides do not match bucket view strides" not in output
