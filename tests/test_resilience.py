"""Resilience with real processes: a SIGKILLed training resumed to the same result, dead runs
marked KILLED, non-finite values stopped, outputs that belong to one run, 8 concurrent
trainings on a new store, and a sweep that survives a bad job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from nnlab.train import train

from helpers import REPO, run_module, venv_env

# A small CNN without dropout: a resumed run must end exactly where an uninterrupted one does.
CNN = [
    "data=mnist",
    "model=cnn",
    "model.channels=[8,16]",
    "model.hidden_size=32",
    "model.dropout=0",
    "model.conv_dropout=0",
    "data.batch_size=16",
    "trainer.max_epochs=20",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "logger.mlflow.log_model=false",
]


def _runs(uri: str, name: str):
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]  # one per data set: nnlab-<data>
    return client, client.search_runs(experiments, f"attributes.run_name = '{name}'")


def _weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_a_sigkilled_run_resumes_into_the_same_run_and_ends_as_if_never_stopped(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"NNLAB_ROOT": str(project), "MLFLOW_TRACKING_URI": uri}
    whole = run_module("nnlab.train", *CNN, "name=whole", "outputs=canonical", cwd=project, timeout=600, **env)
    assert whole.returncode == 0, whole.stderr[-3000:]

    proc = subprocess.Popen(
        [sys.executable, "-m", "nnlab.train", *CNN, "name=crash", "outputs=canonical"],
        cwd=project,
        env=venv_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs_dir = project / "logs" / "runs" / "crash"
    deadline = time.time() + 300
    while not list(runs_dir.glob("*/models/last.ckpt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)  # a few more epochs
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    [folder] = [p.parents[1] for p in runs_dir.glob("*/models/last.ckpt")]
    killed_at = torch.load(folder / "models" / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] + 1
    assert 1 <= killed_at < 20, "the kill came after the run had finished"
    assert not (project / "models" / "crash").exists()  # nothing half-done in the canonical places
    client, [run] = _runs(uri, "crash")
    assert run.info.status == "RUNNING"
    # MLflow gets an epoch only after its last.ckpt is written: a kill between the two leaves the
    # tracked history one epoch behind the checkpoint, never ahead (the resume replays it).
    tracked = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
    assert tracked in (list(range(1, killed_at)), list(range(1, killed_at + 1)))

    resumed = run_module(
        "nnlab.train", *CNN, "name=crash", "outputs=canonical", "resume=true", cwd=project, timeout=600, **env
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, runs = _runs(uri, "crash")
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # the same run, continued
    finished = runs[0]
    assert finished.info.status == "FINISHED" and finished.data.tags["resumed"] == "true"
    assert "died while the run was RUNNING" in finished.data.tags["killed_reason"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
    assert sorted(steps) == list(range(1, 21))  # no gap, no duplicate
    a, b = (json.loads((project / "metrics" / n / "train.json").read_text()) for n in ("whole", "crash"))
    for key in ("epochs", "best_epoch", "best_val_acc", "best_val_loss", "test_acc", "test_loss", "final_train_loss"):
        assert a[key] == b[key], key
    wa, wb = _weights(project / "models" / "whole" / "best.ckpt"), _weights(project / "models" / "crash" / "best.ckpt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not (project / "models" / "crash" / "last.ckpt").exists()


def test_resume_without_an_unfinished_run_is_one_line(project):
    proc = run_module("nnlab.train", "experiment=blobs_linear", "trainer=cpu", "resume=true", cwd=project)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "nnlab.train: error: config: resume: no unfinished run of 'blobs_linear' (a run folder with "
        f"models/last.ckpt) under {project / 'logs' / 'runs' / 'blobs_linear'}; run without resume=true"
    ]


def test_resume_refuses_a_run_whose_process_is_still_alive(project, tmp_path):
    import socket

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "experiment=blobs_linear",
        "trainer=cpu",
        "trainer.max_epochs=100000",
        "trainer.enable_progress_bar=false",
        "logger.mlflow.log_model=false",
        "name=live",
    ]
    env = {"NNLAB_ROOT": str(project), "MLFLOW_TRACKING_URI": uri}
    first = subprocess.Popen(
        [sys.executable, "-m", "nnlab.train", *args],
        cwd=project,
        env=venv_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not list(project.glob("logs/runs/live/*/models/last.ckpt")) and time.time() < deadline:
            assert first.poll() is None, "the first training ended early"
            time.sleep(0.05)
        [folder] = [p.parents[1] for p in project.glob("logs/runs/live/*/models/last.ckpt")]
        second = run_module("nnlab.train", *args, "resume=true", cwd=project, **env)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"nnlab.train: error: config: resume: {folder} is still being trained by process {first.pid} "
            f"on {socket.gethostname()}; wait for it to end (or stop it), then resume"
        ]
        assert first.poll() is None  # the live run goes on, alone in its run and its folder
        client, [run] = _runs(uri, "live")
        assert run.info.status == "RUNNING" and run.data.tags["nnlab.pid"] == str(first.pid)
    finally:
        first.kill()
        first.wait()


def test_a_checkpoint_writer_is_alive_only_while_that_very_process_runs(tmp_path):
    """A pid alone is not a process: after it exits its pid can be given to another one, which a
    different start time tells apart."""
    from nnlab.models.checkpoint import PROCESS_KEY, live_writer, process_identity

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(f"/proc/{child.pid}/stat") as stat:
            started = stat.read().rsplit(")", 1)[1].split()[19]
        writer = {**process_identity(), "pid": child.pid, "started": started}
        assert live_writer({PROCESS_KEY: writer}) == writer
        assert live_writer({PROCESS_KEY: {**writer, "started": "1"}}) is None  # the pid was reused
        assert live_writer({PROCESS_KEY: {**writer, "host": "elsewhere"}}) is None  # not this host's to judge
        assert live_writer({}) is None  # written before processes were recorded
    finally:
        child.kill()
        child.wait()
    assert live_writer({PROCESS_KEY: writer}) is None


def test_a_run_left_running_by_a_dead_process_is_marked_killed_by_the_next_run(compose, project, tmp_path):
    """Dead: its pid runs no more, or (a pid given to another process since) the process running
    under it started at another time than the one the run recorded."""
    import socket

    from nnlab.config.process import start_time

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = subprocess.Popen(["sleep", "300"])  # a live process under a pid the run says was its own
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("nnlab-blobs")
    host = socket.gethostname()

    def left_running(pid: int, started: str | None = None):
        tags = {"nnlab.host": host, "nnlab.pid": str(pid), **({"nnlab.started": started} if started else {})}
        return client.create_run(experiment, run_name="blobs_linear", tags=tags).info.run_id

    try:
        stale = left_running(dead.pid)
        reused = left_running(other.pid, str(int(start_time(other.pid)) - 1))
        alive = left_running(os.getpid(), start_time(os.getpid()))
        unknown_start = left_running(other.pid)  # recorded before start times were: the pid decides
        train(
            compose(
                "experiment=blobs_linear",
                "trainer.max_epochs=1",
                f"logger.mlflow.tracking_uri={uri}",
                "logger.mlflow.log_model=false",
            )
        )
        assert other.poll() is None  # still running: its pid alone would have kept the run RUNNING
    finally:
        other.kill()
        other.wait()
    for run_id, pid in ((stale, dead.pid), (reused, other.pid)):
        assert client.get_run(run_id).info.status == "KILLED"
        assert client.get_run(run_id).data.tags["killed_reason"] == (
            f"process {pid} on {host} died while the run was RUNNING"
        )
    assert client.get_run(alive).info.status == "RUNNING"  # its process lives: left alone
    assert client.get_run(unknown_start).info.status == "RUNNING"
    [new] = [r for r in _runs(uri, "blobs_linear")[1] if r.info.run_id not in (stale, reused, alive, unknown_start)]
    assert new.data.tags["nnlab.started"] == start_time(os.getpid())  # what the next check compares


def test_a_run_that_finished_between_the_search_and_the_liveness_check_stays_finished(tmp_path):
    """Eight trainings of one name at once: one of them searched for RUNNING runs just before
    another ended its run FINISHED and exited, then found that process gone. The search's answer
    is replayed here so the interleaving is certain; the store and client are real."""
    import socket

    from nnlab.tracking.run import mark_dead_runs_killed

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("nnlab")
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    tags = {"nnlab.host": socket.gethostname(), "nnlab.pid": str(finished.pid)}
    run = client.create_run(experiment, run_name="same", tags=tags)
    running = client.search_runs([experiment], "attributes.run_name = 'same' and attributes.status = 'RUNNING'")
    client.set_terminated(run.info.run_id, "FINISHED")  # ...and then its process exited

    class SearchedEarlier(MlflowClient):
        def search_runs(self, *args, **kwargs):
            return running

    assert [r.info.run_id for r in running] == [run.info.run_id]
    assert mark_dead_runs_killed(SearchedEarlier(tracking_uri=uri), experiment, "same") == []
    after = client.get_run(run.info.run_id)
    assert after.info.status == "FINISHED" and "killed_reason" not in after.data.tags
    client.set_terminated(run.info.run_id, "RUNNING")  # had it died RUNNING, it would be KILLED
    assert mark_dead_runs_killed(SearchedEarlier(tracking_uri=uri), experiment, "same") == [run.info.run_id]
    assert client.get_run(run.info.run_id).info.status == "KILLED"


def test_a_diverging_run_stops_with_one_line_and_ends_failed_without_a_model(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_module(
        "nnlab.train",
        "experiment=mnist_mlp",
        "trainer=cpu",
        "optimizer=sgd",
        "optimizer.lr=1e6",
        "name=diverge",
        cwd=project,
        MLFLOW_TRACKING_URI=uri,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "nnlab.train: error: training diverged: train_loss is inf in epoch 1; lower optimizer.lr (the rate was "
    )
    client, [run] = _runs(uri, "diverge")
    assert run.info.status == "FAILED" and "training diverged" in run.data.tags["error"]
    assert client.search_logged_models([run.info.experiment_id]) == []
    assert "val_acc" not in run.data.metrics  # the NaN epoch is not recorded
    assert not list(project.glob("logs/runs/diverge/*/metrics/train.json"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=inf", "optimizer.lr: must be a finite number, got inf"),
        ("data.mean=nan", "data.mean: must be a finite number, got nan"),
        ("model.hidden_sizes=[]", "model.hidden_sizes: needs at least one layer (for none, use model=linear)"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val: must be > 0, got -1.0"),
        (
            "trainer.limit_val_batches=0",
            "trainer.limit_val_batches: must be > 0: the best checkpoint is chosen by "
            "validation loss (null: all batches)",
        ),
        (
            "logger.mlflow.tracking_uri=ftp://host/x",
            "logger.mlflow.tracking_uri: scheme must be one of sqlite, "
            "postgresql, mysql, mssql, http, https, file, databricks, got 'ftp://host/x'",
        ),
        ("seed=-1", "config.seed: must be in [0, 2**32), got -1"),
    ],
)
def test_impossible_values_are_refused_in_one_line(project, override, message):
    proc = run_module("nnlab.train", "experiment=mnist_mlp", "trainer=cpu", override, cwd=project, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"nnlab.train: error: config: {message}"]


@pytest.mark.parametrize("sweep", [[], ["-m", "optimizer.lr=0.1,0.2"]], ids=["run", "sweep"])
def test_an_unreachable_tracking_server_is_one_line(project, sweep):
    proc = run_module(
        "nnlab.train",
        *sweep,
        "experiment=blobs_linear",
        "trainer=cpu",
        "logger.mlflow.tracking_uri=http://127.0.0.1:9",
        cwd=project,
        timeout=120,  # MLflow's own client would retry for minutes
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("nnlab.train: error: tracking server http://127.0.0.1:9 does not answer")
    )
    assert "Retrying" not in proc.stderr


def test_an_ad_hoc_run_keeps_to_its_own_folder_and_evaluate_reads_it(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_module(
        "nnlab.train",
        "experiment=blobs_linear",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "logger.mlflow.log_model=false",
        cwd=project,
        MLFLOW_TRACKING_URI=uri,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (project / "models").exists() and not (project / "metrics").exists()
    [folder] = list((project / "logs" / "runs" / "blobs_linear").iterdir())
    run_id = json.loads((folder / "models" / "run.json").read_text())["mlflow_run_id"]
    assert torch.load(folder / "models" / "best.ckpt", weights_only=True)["nnlab_run_id"] == run_id
    evaluated = run_module(
        "nnlab.evaluate", "experiment=blobs_linear", f"run_dir={folder}", cwd=project, MLFLOW_TRACKING_URI=uri
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((folder / "metrics" / "test.json").read_text())["test_acc"] == 1.0
    assert MlflowClient(uri).get_run(run_id).data.metrics["test_acc"] == 1.0


def _train_blobs_for_evaluate(compose, tmp_path) -> str:
    """Train blobs_linear for one epoch into models/ (not tested yet), a stage of the project's
    pipeline (its hints name train@blobs_linear); the store's URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (Path(os.environ["NNLAB_ROOT"]) / "params.yaml").write_text("experiments:\n  blobs_linear: {}\n")
    train(
        compose(
            "experiment=blobs_linear",
            "trainer.max_epochs=1",
            "test_after_fit=false",
            "logger.mlflow.log_model=false",
            f"logger.mlflow.tracking_uri={uri}",
        )
    )
    return uri


def test_evaluate_refuses_a_checkpoint_and_run_json_that_do_not_belong_together(compose, project, tmp_path):
    uri = _train_blobs_for_evaluate(compose, tmp_path)
    run_json = project / "models" / "blobs_linear" / "run.json"
    real = json.loads(run_json.read_text())["mlflow_run_id"]
    run_json.write_text(json.dumps({"mlflow_run_id": "0" * 32}))  # a stale record from another run
    proc = run_module("nnlab.evaluate", "experiment=blobs_linear", f"logger.mlflow.tracking_uri={uri}", cwd=project)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"nnlab.evaluate: error: {project / 'models' / 'blobs_linear'}: best.ckpt was trained in MLflow run {real} "
        f"but run.json names run {'0' * 32}; one of them is stale: train it again (dvc repro -f train@blobs_linear)"
    ]
    assert not (project / "metrics" / "blobs_linear" / "test.json").exists()


def test_eight_trainings_of_one_name_at_once_on_a_new_sqlite_store_keep_their_own_outputs(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    command = [
        sys.executable,
        "-m",
        "nnlab.train",
        "experiment=blobs_linear",
        "trainer=cpu",
        "name=same",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "logger.mlflow.log_model=false",
        "test_after_fit=false",
    ]
    procs = [
        subprocess.Popen(
            [*command, f"seed={i}"],
            cwd=project,
            env=venv_env(MLFLOW_TRACKING_URI=uri),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(e[-1500:] for e in errors)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("nnlab-blobs").experiment_id])
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.params["seed"] for r in runs) == [str(i) for i in range(8)]
    folders = sorted((project / "logs" / "runs" / "same").iterdir())
    assert len(folders) == 8  # one folder per run: nothing shared, nothing overwritten
    owners = {json.loads((f / "models" / "run.json").read_text())["mlflow_run_id"]: f for f in folders}
    assert set(owners) == {r.info.run_id for r in runs}
    for run_id, folder in owners.items():
        assert torch.load(folder / "models" / "best.ckpt", weights_only=True)["nnlab_run_id"] == run_id
        seed = yaml.safe_load((folder / "models" / "config.yaml").read_text())["seed"]
        assert client.get_run(run_id).data.params["seed"] == str(seed)


def test_one_bad_job_does_not_stop_a_sweep(project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_module(
        "nnlab.train",
        "-m",
        "experiment=blobs_linear",
        "optimizer.lr=-1,0.05",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "logger.mlflow.log_model=false",
        cwd=REPO,
        NNLAB_ROOT=str(project),
        MLFLOW_TRACKING_URI=uri,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("nnlab.train: error: job 0 (")]
    assert "optimizer.lr=-1 " in line and line.endswith("): config: optimizer.lr: must be > 0, got -1.0")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("nnlab-blobs").experiment_id])
    jobs = {r.data.tags["sweep_job"]: r for r in runs if "sweep_job" in r.data.tags}
    assert jobs["0"].info.status == "FAILED"
    assert jobs["0"].data.tags["error"] == "config: optimizer.lr: must be > 0, got -1.0"
    assert jobs["1"].info.status == "FINISHED" and jobs["1"].data.metrics["best_val_acc"] == 1.0
    [parent] = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert parent.data.tags["failed_jobs"] == "1" and parent.data.tags["best_child"] == jobs["1"].info.run_id


def test_evaluate_against_a_store_without_the_training_run_stops_before_scoring(compose, project, tmp_path, capsys):
    from nnlab import evaluate

    def refusal(*overrides: str) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            evaluate._task(compose("experiment=blobs_linear", *overrides))
        assert exited.value.code == 1
        return capsys.readouterr().err.strip()

    uri = _train_blobs_for_evaluate(compose, tmp_path)
    run_id = json.loads((project / "models" / "blobs_linear" / "run.json").read_text())["mlflow_run_id"]
    test_json = project / "metrics" / "blobs_linear" / "test.json"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    MlflowClient(other).search_experiments()  # a store that exists, without that run
    for store in (other, f"sqlite:///{tmp_path / 'typo.db'}"):
        assert refusal(f"logger.mlflow.tracking_uri={store}") == (
            f"nnlab.evaluate: error: {project / 'models' / 'blobs_linear' / 'best.ckpt'} was trained in MLflow "
            f"run {run_id}, which tracking store {store} does not hold: use the store that has it "
            "(MLFLOW_TRACKING_URI or logger.mlflow.tracking_uri), train it again (dvc repro -f train@blobs_linear) "
            "or score without recording (logger=none)"
        )
    assert not (tmp_path / "typo.db").exists()  # looking for the run did not create a store there
    assert refusal("logger.mlflow.tracking_uri=http://127.0.0.1:9").startswith(
        "nnlab.evaluate: error: tracking server http://127.0.0.1:9 does not answer"
    )  # at once: MLflow's client would retry it for minutes
    assert not test_json.exists()  # neither scored: nothing on disk disagrees with the store

    assert evaluate.evaluate(compose("experiment=blobs_linear", "logger=none"))["test_acc"] == 1.0
    assert json.loads(test_json.read_text())["test_acc"] == 1.0
    evaluate.evaluate(compose("experiment=blobs_linear", f"logger.mlflow.tracking_uri={uri}"))
    assert MlflowClient(uri).get_run(run_id).data.metrics["test_acc"] == 1.0
    assert MlflowClient(other).search_runs([e.experiment_id for e in MlflowClient(other).search_experiments()]) == []


def _capture_failure(task, cfg, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        task(cfg)
    return exited.value.code, capsys.readouterr().err.strip().splitlines()


def test_evaluate_given_the_run_folder_of_another_experiment_is_one_line(compose, project, tmp_path, capsys):
    from nnlab import evaluate

    train(compose("experiment=mnist_linear", "trainer.max_epochs=1", "test_after_fit=false", "logger=none"))
    run_dir = tmp_path / "run"
    (run_dir / "models").mkdir(parents=True)
    best = run_dir / "models" / "best.ckpt"
    best.write_bytes((project / "models" / "mnist_linear" / "best.ckpt").read_bytes())
    code, lines = _capture_failure(
        evaluate._task, compose("experiment=blobs_linear", f"run_dir={run_dir}", "logger=none"), capsys
    )
    assert code == 2
    assert lines == [
        f"nnlab.evaluate: error: {best} was trained by 'mnist_linear' on MNISTDataModule with inputs [1, 28, 28], "
        "but 'blobs_linear' scores BlobsDataModule with inputs [2]: give the experiment it was trained with "
        "(experiment=...)"
    ]
    assert not (run_dir / "metrics").exists()


def test_a_retraining_hint_names_only_a_stage_that_exists(compose, project, tmp_path, capsys):
    from nnlab import evaluate

    (project / "params.yaml").write_text("experiments:\n  blobs_linear: {data: blobs, model: linear}\n")
    missing = project / "models" / "blobs_linear" / "best.ckpt"
    assert _capture_failure(evaluate._task, compose("experiment=blobs_linear", "logger=none"), capsys)[1] == [
        f"nnlab.evaluate: error: no checkpoint at {missing} (train it first: dvc repro train@blobs_linear)"
    ]
    for overrides, models in (
        (["name=adhoc"], project / "models" / "adhoc"),  # no stage trains it
        ([f"run_dir={tmp_path / 'run'}"], tmp_path / "run" / "models"),  # a run folder: never train@models
    ):
        code, lines = _capture_failure(
            evaluate._task, compose("experiment=blobs_linear", *overrides, "logger=none"), capsys
        )
        name = "adhoc" if "name=adhoc" in overrides else "blobs_linear"
        assert code == 2 and lines == [
            f"nnlab.evaluate: error: no checkpoint at {models / 'best.ckpt'} (train it first: "
            f"python -m nnlab.train name={name} with the experiment and overrides it was trained with)"
        ]


def _trained_linear(compose, project) -> tuple:
    train(compose("experiment=mnist_linear", "trainer.max_epochs=1", "test_after_fit=false", "logger=none"))
    path = project / "models" / "mnist_linear" / "best.ckpt"
    return path, torch.load(path, map_location="cpu", weights_only=True)


def test_a_checkpoint_with_nan_weights_is_refused_not_used_to_predict(compose, project, tmp_path):
    from PIL import Image

    path, state = _trained_linear(compose, project)
    state["state_dict"]["net.net.1.weight"][3, 5] = float("nan")
    broken = tmp_path / "nan.ckpt"
    torch.save(state, broken)
    Image.new("L", (28, 28), 255).save(tmp_path / "blank.png")
    proc = run_module("nnlab.predict", "--model", str(broken), str(tmp_path / "blank.png"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"nnlab.predict: error: {broken}: weights net.1.weight hold NaN or infinite values (the training that "
        "wrote it diverged): refusing to use it"
    ]


def test_a_model_that_returns_nan_logits_is_refused():
    import numpy as np

    from nnlab.predict import ModelError, logits_of

    with pytest.raises(ModelError) as error:
        logits_of(lambda x: np.full((len(x), 10), np.nan), np.zeros((2, 1, 28, 28), np.float32))
    assert (
        str(error.value) == "the model returned NaN or infinite logits: its weights are broken (a diverged training?)"
    )


def test_checkpoint_load_errors_are_whole_lines(compose, project, tmp_path):
    """torch's "Error(s) in loading state_dict for MLP:" stops at a colon; a KeyError is a bare
    "'state_dict'": both say what is wrong instead."""
    from nnlab.models.checkpoint import load_network

    _, state = _trained_linear(compose, project)
    cases = {
        "no-weights": (
            {k: v for k, v in state.items() if k != "state_dict"},
            "holds no network weights (no state_dict of named tensors inside)",
        ),
        "shape": (
            {**state, "state_dict": {**state["state_dict"], "net.net.1.weight": torch.zeros(10, 5)}},
            ": its weights do not fit the network its saved config describes (size mismatch: net.1.weight is "
            "[10, 5], the network needs [10, 784])",
        ),
        "keys": (
            {**state, "state_dict": {"net.other.weight": torch.zeros(1)}},
            ": its weights do not fit the network its saved config describes (missing net.1.bias, net.1.weight; "
            "unexpected other.weight)",
        ),
    }
    for name, (contents, reason) in cases.items():
        path = tmp_path / f"{name}.ckpt"
        torch.save(contents, path)
        with pytest.raises(ValueError) as error:
            load_network(path)
        assert str(error.value) == f"{path}{'' if reason.startswith(':') else ' '}{reason}", name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["experiment=blobs_linear", "trainer=gpu"],
            "trainer.accelerator: gpu needs a CUDA GPU and torch finds none on this machine; "
            "use trainer=auto (the best device present) or trainer=cpu",
        ),
        (
            ["data=blobs", "model=numpy_mlp", "optimizer=sgd", "trainer=ddp"],
            "trainer.strategy: the NumPy network (model=numpy_mlp) trains in one process on one device: "
            "use trainer=cpu, got 'ddp'",
        ),
    ],
    ids=["gpu-absent", "ddp-numpy"],
)
def test_a_choice_that_would_not_run_as_recorded_is_refused_in_one_line(project, tmp_path, overrides, message):
    """trainer=gpu without a GPU was Hydra's five lines; ddp with the NumPy network trained the
    NumPy network alone while MLflow recorded DDP. CUDA_VISIBLE_DEVICES='' hides any GPU."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_module(
        "nnlab.train", *overrides, cwd=project, timeout=120, MLFLOW_TRACKING_URI=uri, CUDA_VISIBLE_DEVICES=""
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"nnlab.train: error: config: {message}"]
    assert not (tmp_path / "mlflow.db").exists() and not list(project.glob("logs/runs/*/*/models"))  # nothing ran


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["experiment=blobs_linear", "trainer.precision=16-mixed"],
            "trainer.precision: 16-mixed needs a GPU (on the CPU Lightning would train in bf16-mixed while the "
            "run records 16-mixed); use 32-true, bf16-mixed or auto",
        ),
        (
            ["data=blobs", "model=numpy_mlp"],  # train.yaml's optimizer: adam
            "optimizer: the NumPy network (model=numpy_mlp) trains by plain SGD: use optimizer=sgd with momentum 0 "
            "and weight_decay 0, got 'Adam'",
        ),
        (
            ["data=blobs", "model=numpy_mlp", "optimizer=sgd", "scheduler=cosine"],
            "scheduler: the NumPy network (model=numpy_mlp) keeps optimizer.lr constant: use scheduler=none, "
            "got 'CosineAnnealingLR'",
        ),
    ],
    ids=["fp16-on-cpu", "adam-numpy", "schedule-numpy"],
)
def test_what_a_run_records_is_what_it_would_run(compose, overrides, message):
    from nnlab.config.schema import ConfigError

    with pytest.raises(ConfigError) as refused:
        train(compose(*overrides, "logger=none"))
    assert str(refused.value) == message


def test_the_numpy_network_records_the_precision_it_computes_in(compose, project):
    train(
        compose(
            "data=blobs",
            "model=numpy_mlp",
            "optimizer=sgd",
            "trainer.precision=auto",
            "trainer.max_epochs=1",
            "logger=none",
            "name=np",
        )
    )
    assert yaml.safe_load((project / "models" / "np" / "config.yaml").read_text())["trainer"]["precision"] == "32-true"


# ---------------------------------------------------------------- full disks, unwritable places

BIG_BLOBS = [  # a checkpoint of 3.2 MB (weights and Adam's state): a few MB of disk fill up
    "data=blobs",
    "model=mlp",
    "model.hidden_sizes=[512,512]",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "logger.mlflow.log_model=false",
    "name=disk",
]


def _in_small_filesystem(mountpoint, size: str, script: str) -> subprocess.CompletedProcess:
    """Run the bash ``script`` with a new tmpfs of ``size`` mounted at ``mountpoint`` in a mount
    namespace of its own: a real file system that fills up, gone when the script ends. A user
    namespace maps the caller to root there, so it needs no privileges outside."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    mount = f"mount -t tmpfs -o size={size} tmpfs {mountpoint}"
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", f"{mount} && {script}"],
        capture_output=True,
        text=True,
        env=venv_env(),
        timeout=300,
    )


def _new_store(uri: str) -> None:
    MlflowClient(tracking_uri=uri).search_experiments()  # created now: no migration chatter later


def test_a_full_disk_under_the_run_folder_is_one_line_and_leaves_no_half_written_checkpoint(project, tmp_path):
    small, uri = tmp_path / "small", f"sqlite:///{tmp_path / 'mlflow.db'}"
    _new_store(uri)
    command = " ".join([sys.executable, "-m", "nnlab.train", *BIG_BLOBS, f"paths.log_dir={small}/logs"])
    environment = f"NNLAB_ROOT={project} MLFLOW_TRACKING_URI={uri}"
    proc = _in_small_filesystem(
        small, "4m", f"cd {project} && {environment} {command}; echo rc=$?; echo '--- files'; find {small} -type f"
    )
    out, files = proc.stdout.split("--- files\n")
    assert "rc=1" in out, proc.stderr[-3000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("nnlab.train: error: no space left on the disk of ") and "best.ckpt" in line, line
    assert line.endswith("nothing half-written was kept as a result")
    names = [f.rsplit("/", 1)[1] for f in files.split()]
    assert "last.ckpt" in names  # the last whole epoch: resume=true continues from it
    assert "best.ckpt" not in names and not [n for n in names if n.endswith(".partial")], names
    assert "train.json" not in names  # nothing a later step could take for a result
    client, [run] = _runs(uri, "disk")
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["error"]


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (
            "1m",  # full before the store's tables are written
            "tracking store sqlite:///{store}/mlflow.db cannot be used: database or disk is full; "
            "free space on its disk or point MLFLOW_TRACKING_URI elsewhere",
        ),
        (
            "3m",  # full when the run's checkpoint is copied into its artifacts
            "tracking store sqlite:///{store}/mlflow.db could not store the run's artifacts (No space left on "
            "device); free space on its disk or point MLFLOW_TRACKING_URI elsewhere",
        ),
    ],
    ids=["store", "artifacts"],
)
def test_a_full_disk_under_the_tracking_store_is_one_line_and_leaves_no_run_running(project, tmp_path, size, message):
    """The embedded store (mlflow.db and mlartifacts/ at the project's root) on a small disk."""
    store = tmp_path / "small"
    command = " ".join([sys.executable, "-m", "nnlab.train", *BIG_BLOBS, f"paths.log_dir={tmp_path}/logs"])
    # read-only, from the store's own table: a client would try to finish migrating a store that
    # its full disk left half-created (and fail again)
    statuses = (
        "import json, sqlite3; "
        f"db = sqlite3.connect('file:{store}/mlflow.db?mode=ro', uri=True); "
        "tables = [t for (t,) in db.execute('select name from sqlite_master')]; "
        "print(json.dumps([s for (s,) in db.execute('select status from runs')] if 'runs' in tables else []))"
    )
    proc = _in_small_filesystem(
        store,
        size,
        f"cp -r {project}/data {project}/params.yaml {store}/ && cd {store} && "
        f"NNLAB_ROOT={store} MLFLOW_TRACKING_URI= {command}; echo rc=$?; "
        f"if [ -s {store}/mlflow.db ]; then {sys.executable} -c \"{statuses}\" 2>/dev/null; else echo '[]'; fi",
    )
    # MLflow logs the creation of a new store (INFO mlflow.store.db.utils): its news, not an error
    lines = [line for line in proc.stderr.strip().splitlines() if " INFO mlflow.store.db.utils: " not in line]
    assert "rc=1" in proc.stdout, proc.stderr[-3000:]
    assert lines == [f"nnlab.train: error: {message.format(store=store)}"]
    recorded = proc.stdout.strip().splitlines()[-1]
    assert recorded in ("[]", '["FAILED"]'), proc.stdout  # never RUNNING


@pytest.mark.parametrize(
    "how",
    [
        ["experiment=blobs_linear"],
        ["-m", "experiment=blobs_linear", "optimizer.lr=0.01,0.1"],
        ["-m", "hparams_search=blobs_optuna", "hydra.sweeper.n_trials=2"],
    ],
    ids=["run", "sweep", "search"],
)
def test_an_output_folder_that_cannot_be_created_is_one_line(project, how):
    proc = run_module("nnlab.train", *how, "trainer=cpu", "paths.log_dir=/proc/nnlab", cwd=project, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "nnlab.train: error: config: paths.log_dir: cannot create /proc/nnlab (No such file or directory); "
        "choose a folder you can write"
    ]
    # before anything was opened: no parent run (RUNNING or not), no study, no trial
    assert not (project / "mlflow.db").exists() and not (project / "optuna.db").exists()


def test_a_tracking_store_file_that_is_not_a_database_is_one_line(project, tmp_path):
    store = tmp_path / "notes.db"
    store.write_text("these are my notes, not a database\n")
    uri = f"sqlite:///{store}"
    proc = run_module("nnlab.train", "experiment=blobs_linear", "trainer=cpu", cwd=project, MLFLOW_TRACKING_URI=uri)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"nnlab.train: error: tracking store {uri}: {store} is not an SQLite database; point MLFLOW_TRACKING_URI "
        "(or logger.mlflow.tracking_uri) at the store's .db file, or move that file aside to start a new store"
    )
    assert store.read_text() == "these are my notes, not a database\n"  # untouched


def test_a_copied_project_does_not_write_into_the_original_ones_artifacts(compose, project, tmp_path, monkeypatch):
    import shutil

    from nnlab.errors import TrackingError

    quick = ("experiment=blobs_linear", "trainer.max_epochs=1", "logger.mlflow.log_model=false")
    train(compose(*quick))  # the embedded store: mlflow.db and mlartifacts/ at the project's root
    before = sorted(p.name for p in (project / "mlartifacts").iterdir())
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    monkeypatch.setenv("NNLAB_ROOT", str(copy))
    with pytest.raises(TrackingError) as refused:
        train(compose(*quick))
    assert str(refused.value) == (
        f"tracking store {copy / 'mlflow.db'} keeps its artifacts in {project / 'mlartifacts'}, not beside it in "
        f"{copy / 'mlartifacts'}: the project (or mlflow.db) was moved or copied, and new artifacts would go to "
        "the old place; move it back, point MLFLOW_TRACKING_URI at the original store, or move mlflow.db and "
        "mlartifacts/ aside to start a new one"
    )
    assert sorted(p.name for p in (project / "mlartifacts").iterdir()) == before  # the original untouched


def test_only_errors_of_writing_become_a_storage_line():
    import errno

    from nnlab.config.paths import storage_error

    denied = storage_error(OSError(errno.EACCES, "Permission denied", "/data/runs/x"))
    assert denied.line() == (
        "cannot write /data/runs/x (Permission denied); choose folders this user can write "
        "(paths.log_dir, paths.models_dir, paths.metrics_dir, paths.plots_dir)"
    )
    assert (
        storage_error(OSError(errno.ENOSPC, "No space left on device"))
        .line()
        .startswith("no space left on the disk: free space there")
    )
    assert storage_error(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")) is None  # not a disk's
