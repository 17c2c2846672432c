"""Optuna searches through Hydra (hydra/sweeper=nnlab_optuna): real studies in SQLite, real
launchers (basic, joblib, submitit_local), real trainings on the blobs, MLflow read through its
client, real SIGKILLs of real processes. Every search here runs hparams_search=blobs_optuna, 4
epochs a trial unless a trial must live long enough to be killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hydra_plugins.nnlab_optuna_sweeper._space import search_space
from hydra_plugins.nnlab_optuna_sweeper.study import (
    Heartbeat,
    SearchError,
    build_pruner,
    build_sampler,
    check_objective,
    heartbeat_options,
    resolve_storage,
    trial_id,
)
from nnlab.data import blobs
from nnlab.tracking.credentials import STORAGE_ENV, override_credentials_to_environment, redacted

from helpers import REPO, venv_env

BASE = ("-m", "hparams_search=blobs_optuna", "trainer=cpu", "trainer.max_epochs=4")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def make_project(root: Path) -> Path:
    """A project root with the prepared blobs (all a blobs search reads)."""
    blobs.write(root / "data" / "blobs", blobs.make(500, 3, 2, 42, 0.2))
    (root / "params.yaml").write_text("{}\n")
    return root


def search(project: Path, *args: str, wait: bool = True):
    """``python -m nnlab.train -m hparams_search=blobs_optuna ...`` rooted in ``project``."""
    env = venv_env(NNLAB_ROOT=str(project), MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    env.pop(STORAGE_ENV, None)  # the default storage: optuna.db at the project root
    command = [sys.executable, "-m", "nnlab.train", *BASE, *args]
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def study(project: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{project / 'optuna.db'}")


def tracked(project: Path, name: str):
    """(client, the search's parent runs oldest first, {parent id: its child runs})."""
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.optuna_study = '{name}'")
    parents = sorted((r for r in runs if r.data.tags.get("sweep") == "parent"), key=lambda r: r.info.start_time)
    children = {
        p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id] for p in parents
    }
    return client, parents, children


def trial_numbers(runs) -> list[int]:
    return sorted(int(r.data.tags["optuna_trial"]) for r in runs)


def test_six_trials_on_two_joblib_workers_then_three_more_continue_the_study(tmp_path):
    project = make_project(tmp_path)
    first = search(project, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_trials=6")
    assert first.returncode == 0, first.stderr[-3000:]
    s = study(project, "blobs_optuna")
    assert sorted(t.number for t in s.trials) == list(range(6))
    assert all(t.state in FINISHED for t in s.trials)
    client, [parent], children = tracked(project, "blobs_optuna")
    kids = children[parent.info.run_id]
    assert trial_numbers(kids) == list(range(6))
    assert all(k.info.status == "FINISHED" for k in kids)
    completed = [k for k in kids if k.data.tags.get("optuna_state") != "pruned"]
    best_child = min(completed, key=lambda k: k.data.metrics["best_val_loss"])
    assert parent.data.metrics["best_value"] == best_child.data.metrics["best_val_loss"] == s.best_value
    assert parent.data.tags["best_trial_run_id"] == best_child.info.run_id
    assert parent.data.tags["best_trial"] == best_child.data.tags["optuna_trial"] == str(s.best_trial.number)
    assert json.loads(parent.data.tags["best_params"]) == s.best_params
    assert parent.data.tags["optuna_storage"] == f"sqlite:///{project / 'optuna.db'}"
    assert parent.data.tags["optuna_trials_before"] == "0" and parent.data.tags["optuna_resumed"] == "false"
    # the report, its plots on the parent run, and the best trial on the terminal
    assert f"best trial {s.best_trial.number}: val_loss = " in first.stdout
    report = (project / "reports" / "search" / "blobs_optuna.md").read_text()
    assert f"Trial {s.best_trial.number}: **val_loss = {s.best_value:.6g}**" in report
    # the report's links name the plots where the parent run's artifacts keep them
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert logged == {"search/blobs_optuna.md", "search/blobs_optuna"}
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "search/blobs_optuna")}
    assert {"search/blobs_optuna/history.png", "search/blobs_optuna/parallel_coordinates.png"} <= plots
    assert "search/blobs_optuna/report.html" in plots  # the page MLflow shows, its plots inline
    assert "![history](blobs_optuna/history.png)" in report
    # nothing of this machine in a report that may be committed: no absolute path, no run id
    assert str(project) not in report and not re.search(r"[0-9a-f]{32}", report)
    assert "| storage | `sqlite:///optuna.db` |" in report
    # a question with an answer: no loss of 0, no tie for the best
    values = sorted(t.value for t in s.trials if t.state == TrialState.COMPLETE)
    assert values[0] > 0 and (len(values) == 1 or values[0] < values[1])
    # names people read: the objective in Optuna's dashboard, the runs in MLflow; one owner of best
    assert s.metric_names == ["val_loss"]
    assert parent.info.run_name == "search: blobs_optuna"
    assert sorted(k.info.run_name for k in kids) == [f"trial {n}" for n in range(6)]
    assert parent.data.tags["mlflow.user"] and parent.data.tags["mlflow.source.name"] == "nnlab.train"
    assert "best_child" not in parent.data.tags and "best_child_val_acc" not in parent.data.metrics
    # each trial in its own folder; two jobs on this machine's cores: torch threads split between them
    folder = next((project / "logs" / "multirun").rglob(f"trial_{s.best_trial.number}"))
    assert s.best_trial.user_attrs["run_dir"] == str(folder)
    job = yaml.safe_load((folder / ".hydra" / "hydra.yaml").read_text())["hydra"]["sweeper"]["job"]
    assert job["study"] == "blobs_optuna" and job["trial"] == str(s.best_trial.number)
    assert int(job["threads"]) == max(1, len(os.sched_getaffinity(0)) // 2)

    again = search(project, "hydra.sweeper.n_trials=3")
    assert again.returncode == 0, again.stderr[-3000:]
    s = study(project, "blobs_optuna")
    assert sorted(t.number for t in s.trials) == list(range(9))
    _, parents, children = tracked(project, "blobs_optuna")
    assert [p.info.run_id for p in parents][0] == parent.info.run_id and len(parents) == 2
    newer = parents[1]
    assert trial_numbers(children[newer.info.run_id]) == [6, 7, 8]
    assert newer.data.tags["optuna_trials_before"] == "6" and newer.data.tags["optuna_resumed"] == "true"
    # the best over the whole study, wherever it was found
    assert newer.data.metrics["best_value"] == s.best_value
    assert newer.data.tags["best_trial_run_id"] == s.best_trial.user_attrs["mlflow_run_id"]
    assert {k.split(":", 1)[1] for k in s.user_attrs if k.startswith("mlflow_parent:")} == {
        p.info.run_id for p in parents
    }


def test_two_independent_processes_share_one_sqlite_study(tmp_path):
    project = make_project(tmp_path)
    procs = [search(project, "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=shared", wait=False) for _ in "ab"]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, stderr) in zip(procs, results):
        assert proc.returncode == 0, stderr[-3000:]
        assert "database is locked" not in stderr
    s = study(project, "shared")
    assert sorted(t.number for t in s.trials) == list(range(6))  # no number used twice
    assert all(t.state in FINISHED for t in s.trials)
    _, parents, children = tracked(project, "shared")
    assert len(parents) == 2
    assert sorted(n for p in parents for n in trial_numbers(children[p.info.run_id])) == list(range(6))
    assert all(len(children[p.info.run_id]) == 3 for p in parents)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """4 trials whose learning rate is -1 (a bad value), 1e-4 (too slow: val_loss above 0.5 at
    epoch 2, pruned by a threshold pruner) or 0.1 (completes); the seeded random sampler draws
    1e-4, 1e-4, -1, 0.1."""
    project = make_project(tmp_path_factory.mktemp("mixed"))
    run = search(
        project,
        "hydra.sweeper.study_name=mixed",
        "hydra.sweeper.n_trials=4",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=5",
        "hydra/sweeper/pruner=threshold",
        "hydra.sweeper.pruner.upper=0.5",
        "hydra.sweeper.pruner.n_warmup_steps=2",
        "optimizer.lr=choice(-1,0.0001,0.1)",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    _, [parent], children = tracked(project, "mixed")
    kids = {int(k.data.tags["optuna_trial"]): k for k in children[parent.info.run_id]}
    return project, run, study(project, "mixed"), kids


def by_lr(s: optuna.Study, lr: float) -> list[optuna.trial.FrozenTrial]:
    return [t for t in s.trials if t.params["optimizer.lr"] == lr]


def test_a_threshold_pruner_stops_trials_early_and_they_end_pruned_not_failed(mixed):
    project, run, s, kids = mixed
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    pruned, completed = by_lr(s, 0.0001), by_lr(s, 0.1)
    assert pruned and completed
    for trial in pruned:
        assert trial.state == TrialState.PRUNED and trial.last_step == 2
        child = kids[trial.number]
        assert child.info.status == "FINISHED"
        assert child.data.tags["optuna_state"] == "pruned" and child.data.tags["pruned_at_epoch"] == "2"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")] == [1, 2]  # of 4
        train_json = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics" / "train.json").read_text())
        assert train_json["epochs"] == 2 and train_json["pruned_epoch"] == 2
    for trial in completed:
        assert trial.state == TrialState.COMPLETE and trial.last_step == 4
        assert kids[trial.number].data.metrics["best_val_loss"] == trial.value
        assert "optuna_state" not in kids[trial.number].data.tags
    assert "pruned" in run.stdout and f"{len(pruned)} pruned" in run.stdout


@pytest.mark.parametrize("max_epochs, pruned_epoch", [(3, 1), (1, None)])
def test_a_trial_is_pruned_only_while_epochs_are_left(tmp_path, max_epochs, pruned_epoch):
    """A real Lightning fit judged by a real trial whose pruner stops everything (val_loss above
    -1): with epochs left it stops after the first; a trial that trained its last epoch reports
    it and ends as trained, not pruned."""
    import lightning as L
    import torch
    from omegaconf import OmegaConf

    from nnlab.tracking.trial import JobTrial
    from nnlab.training.pruning import PruneWhenJudged

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    trial = optuna.create_study(study_name="s", storage=storage).ask()
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "upper": -1.0, "n_warmup_steps": 0}
    sweeper = OmegaConf.create({"metric": "val_loss", "pruner": pruner})
    judged = JobTrial(OmegaConf.create({"study": "s", "trial": trial.number, "storage": storage}), sweeper)

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])

        def validation_step(self, batch, _):
            self.log(judged.monitor, torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2), torch.arange(8) % 2))
    callback = PruneWhenJudged(judged.monitor, judged.judge)
    trainer = L.Trainer(
        max_epochs=max_epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Tiny(), data, data)
    assert judged.pruned_epoch == pruned_epoch and callback.stopped_epoch == pruned_epoch
    assert trainer.current_epoch == (pruned_epoch or max_epochs)
    reported = optuna.load_study(study_name="s", storage=storage).trials[0].intermediate_values
    assert sorted(reported) == list(range(1, (pruned_epoch or max_epochs) + 1))


def test_a_trials_best_epoch_is_its_objectives_and_its_checkpoint_keeps_it(tmp_path):
    """In a val_acc search a trial's value, train.json's best epoch and the checkpoint it keeps are
    the epoch of its highest val_acc (the first, on a tie), not the lowest val_loss's that a single
    run keeps by default: on the blobs, val_acc reaches its top epochs before val_loss does."""
    import csv

    from nnlab.models.checkpoint import read_checkpoint

    project = make_project(tmp_path)
    run = search(
        project,
        "hydra.sweeper.study_name=acc",
        "hydra.sweeper.metric=val_acc",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=2",
        "hydra/sweeper/pruner=none",
        "trainer.max_epochs=6",
    )
    assert run.returncode == 0, run.stderr
    earlier = 0
    for trial in study(project, "acc").trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        rows = list(csv.DictReader((run_dir / "plots" / "history.csv").open()))
        top = max(float(r["val_acc"]) for r in rows)
        first_top = next(int(r["epoch"]) for r in rows if float(r["val_acc"]) == top)
        lowest_loss = min(rows, key=lambda r: float(r["val_loss"]))["epoch"]
        train = json.loads((run_dir / "metrics" / "train.json").read_text())
        assert trial.value == train["best_val_acc"] == top
        assert train["best_epoch"] == first_top
        assert read_checkpoint(run_dir / "models" / "best.ckpt")["epoch"] + 1 == first_top  # Lightning counts from 0
        earlier += first_top < int(lowest_loss)
    assert earlier, "no trial told the two rules apart"


def test_the_report_gives_a_pruned_trial_its_best_epoch_not_its_last(tmp_path):
    """Optuna keeps a pruned trial's last reported value; the report shows its best epoch's by the
    objective, the number its MLflow run holds as best_<metric>, and ranks by it."""
    from nnlab.report.search import write_search_report

    s = optuna.create_study(direction="maximize")
    s.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.9, intermediate_values={1: 0.8, 2: 0.9}))
    s.add_trial(
        optuna.trial.create_trial(
            params={}, distributions={}, state=TrialState.PRUNED, intermediate_values={1: 0.85, 2: 0.95, 3: 0.5}
        )
    )
    s.add_trial(
        optuna.trial.create_trial(params={}, distributions={}, state=TrialState.PRUNED, intermediate_values={1: 0.7})
    )
    summary = {
        "study": "s", "metric": "val_acc", "direction": "maximize", "storage": "sqlite:///optuna.db",
        "sampler": "TPESampler", "pruner": "MedianPruner", "trials": 3,
        "counts": {"complete": 1, "pruned": 2, "fail": 0}, "best": None,
    }  # fmt: skip
    report = write_search_report(s, summary, tmp_path)[0].read_text()
    rows = [line.split(" | ")[:4] for line in report.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert rows == [["| 0", "complete", "0.9", "2"], ["| 1", "pruned", "0.95", "3"], ["| 2", "pruned", "0.7", "1"]]


def test_a_failing_trial_does_not_stop_the_search(mixed):
    _, run, s, kids = mixed
    failed = by_lr(s, -1)
    assert failed and all(t.state == TrialState.FAIL for t in failed)
    assert len(s.trials) == 4 and all(t.state != TrialState.RUNNING for t in s.trials)
    assert max(t.number for t in s.trials if t.state != TrialState.FAIL) > min(t.number for t in failed)
    for trial in failed:
        child = kids[trial.number]
        assert child.info.status == "FAILED"
        assert child.data.tags["error"] == "config: optimizer.lr: must be > 0, got -1.0"
    lines = [line for line in run.stderr.splitlines() if line.startswith("nnlab.train: error: job ")]
    assert len(lines) == len(failed) and all(
        line.endswith("config: optimizer.lr: must be > 0, got -1.0") for line in lines
    )


def test_submitit_local_runs_two_trials_and_tracks_them(tmp_path):
    project = make_project(tmp_path)
    run = search(project, "hydra/launcher=submitit_local", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=sub")
    assert run.returncode == 0, run.stderr[-3000:]
    s = study(project, "sub")
    assert sorted(t.number for t in s.trials) == [0, 1] and all(t.state in FINISHED for t in s.trials)
    _, [parent], children = tracked(project, "sub")
    kids = children[parent.info.run_id]
    assert trial_numbers(kids) == [0, 1] and all(k.info.status == "FINISHED" for k in kids)
    for trial in s.trials:
        assert trial.user_attrs["mlflow_run_id"] in {k.info.run_id for k in kids}
    # the jobs ran as submitit processes, with their own logs
    assert list((project / "logs" / "multirun").rglob(".submitit/*/*_0_log.out"))


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        (
            "optimizer.lr=tag(log,interval(0,0.1))",
            "optimizer.lr=tag(log,interval(0,0.1)): tag(log, interval(0, 0.1)) needs low > 0 (a log scale), got 0",
        ),
        ("optimiser.lr=interval(0.01,0.1)", "optimiser.lr: cannot be set (Could not override 'optimiser.lr'."),
        # sweeper settings: one line of nnlab's, not Hydra's advice to add '+', never ignored
        (
            "hydra.sweeper.n_trail=3",
            "config: hydra.sweeper.n_trail: the Optuna sweeper has no such setting; did you mean n_trials? allowed: ",
        ),
        (
            "+hydra.sweeper.n_trail=1",
            "config: hydra.sweeper.n_trail: the Optuna sweeper has no such setting; did you mean n_trials? allowed: ",
        ),
        ("optimizer.lr=choice()", "config: optimizer.lr=choice(): empty choice is not legal"),
        (
            "hydra/sweeper/sampler=annealing",
            "config: hydra/sweeper/sampler=annealing: unknown sampler; allowed: tpe, random, cmaes, qmc, gp, nsgaii",
        ),
        # a space none of whose values passes the config check: before the first trial, not 4 failed trials
        (
            "optimizer.lr=choice(-4,0)",
            "optimizer.lr: no value of the search space passes the config check "
            "(config: optimizer.lr: must be > 0, got -4.0)",
        ),
    ],
)
def test_a_bad_search_space_stops_with_one_line(tmp_path, argument, message):
    project = make_project(tmp_path)
    run = search(project, argument, "logger=none")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"nnlab.train: error: {message}")
    assert "Traceback" not in run.stderr and "HYDRA_FULL_ERROR" not in run.stderr
    assert not (project / "optuna.db").exists() or not study(project, "blobs_optuna").trials


def test_the_search_space_reads_hydras_override_grammar():
    params = {
        "optimizer.lr": "tag(log, interval(1e-4, 1e-1))",
        "data.batch_size": "choice(16, 32)",
        "model.hidden_sizes": "choice([8], [32, 16])",
        "model.dropout": 0.1,
        "trainer.max_epochs": "range(2, 11, 4)",
        "seed": "tag(int, interval(1, 8))",
    }
    space, fixed = search_space(params, ["optimizer=choice(adam,sgd)", "data.batch_size=64", "+extra.key=1"])
    by = {p.name: p for p in space}
    assert by["optimizer.lr"].distribution == FloatDistribution(1e-4, 0.1, log=True)
    assert by["model.hidden_sizes"].distribution == CategoricalDistribution(["[8]", "[32,16]"])
    assert by["model.hidden_sizes"].override("[32,16]") == "model.hidden_sizes=[32,16]"
    assert by["trainer.max_epochs"].distribution == IntDistribution(2, 10, step=4)  # 2, 6, 10 as a grid would
    assert by["seed"].distribution == IntDistribution(1, 8)
    assert by["optimizer"].distribution == CategoricalDistribution(["adam", "sgd"])
    assert by["optimizer.lr"].override(0.00123) == "optimizer.lr=0.00123"
    # the command line wins: a fixed value there takes the key out of the search
    assert "data.batch_size" not in by
    assert fixed == ["model.dropout=0.1", "data.batch_size=64", "+extra.key=1"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("interval(1, 1)", "interval(1, 1) needs finite bounds with low < high"),
        ("tag(foo, interval(0, 1))", "unknown tag 'foo'; allowed: log, int"),
        ("tag(int, interval(0.5, 2))", "tag(int, interval(0.5, 2)) needs whole-number bounds"),
        ("tag(log, range(1, 5))", "range(...) has no log scale; use tag(log, interval(low, high))"),
        ("choice(", "cannot read 'k=choice('"),
    ],
)
def test_a_bad_search_space_entry_is_named_in_one_line(value, message):
    with pytest.raises(SearchError) as caught:
        search_space({"k": value}, [])
    assert str(caught.value).startswith(f"hydra.sweeper.params.k: {message}")
    assert "\n" not in str(caught.value)


def test_bad_sweeper_settings_are_one_line():
    def error(call, *args) -> str:
        with pytest.raises(SearchError) as caught:
            call(*args)
        return str(caught.value)

    assert (
        error(check_objective, "val_loss", "maximize")
        == "hydra.sweeper.direction: val_loss is to minimize, got 'maximize'"
    )
    assert (
        error(check_objective, "acc", "maximize") == "hydra.sweeper.metric: must be one of val_acc, val_loss, got 'acc'"
    )
    assert error(build_sampler, "annealing").startswith("hydra.sweeper.sampler: unknown sampler 'annealing'; allowed: ")
    assert error(build_pruner, {"_target_": "os.system"}).startswith("hydra.sweeper.pruner._target_: must be one of ")
    assert error(build_pruner, {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": -1}) == (
        "hydra.sweeper.pruner: MedianPruner: Number of startup trials cannot be negative, but got n_startup_trials=-1."
    )
    # null means Optuna's default; a key the chosen pruner does not take is dropped
    assert isinstance(
        build_pruner({"_target_": "optuna.pruners.NopPruner", "n_warmup_steps": 2}), optuna.pruners.NopPruner
    )
    threshold = build_pruner({"_target_": "optuna.pruners.ThresholdPruner", "upper": 0.5, "n_startup_trials": 3})
    assert isinstance(threshold, optuna.pruners.ThresholdPruner)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_heartbeat_settings_are_checked_and_turn_on_optunas_retry_of_lost_trials():
    options = heartbeat_options({"heartbeat_interval": 5, "grace_period": None, "max_retry": 2})
    assert options["heartbeat_interval"] == 5 and options["grace_period"] is None
    assert isinstance(options["heartbeat_stale_trial_callback"], RetryHeartbeatStaleTrialCallback)
    assert heartbeat_options({"heartbeat_interval": None}) == {}  # off
    for settings, message in (
        ({"heartbeat_interval": 0}, "hydra.sweeper.heartbeat_interval: must be a whole number >= 1, got 0"),
        (
            {"heartbeat_interval": 5, "grace_period": 5},
            "hydra.sweeper.grace_period: must be longer than heartbeat_interval (5), got 5",
        ),
        ({"heartbeat_interval": 5, "max_retry": -1}, "hydra.sweeper.max_retry: must be a whole number >= 0 or null"),
    ):
        with pytest.raises(SearchError) as caught:
            heartbeat_options(settings)
        assert str(caught.value).startswith(message)


def test_a_heartbeat_keeps_its_trials_running_and_ends_with_them(tmp_path):
    """The one heartbeat of jobs and sweeper: the trials it beats for outlive Optuna's stale-trial
    check, a silent one past the grace period is failed, and the beat ends once its trials finish."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="beat", storage=storage)
    kept, silent = study.ask(), study.ask()
    for trial in (kept, silent):
        storage.record_heartbeat(trial_id(storage, "beat", trial.number))
    with Heartbeat(storage, {trial_id(storage, "beat", kept.number): kept.number}, 0.5, name="test-beat"):
        time.sleep(3.5)
        optuna.storages.fail_stale_trials(study)
        states = {t.number: t.state for t in study.get_trials()}
    assert states == {kept.number: TrialState.RUNNING, silent.number: TrialState.FAIL}
    beat = Heartbeat(storage, {trial_id(storage, "beat", kept.number): kept.number}, 0.5, name="test-beat")
    study.tell(kept, 0.5)
    beat.thread.join(timeout=10)
    assert not beat.thread.is_alive()  # ended by itself: its trial is COMPLETE


def test_the_storage_is_the_config_else_the_environment_else_optuna_db_at_the_root(tmp_path, monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert resolve_storage(None, tmp_path) == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert resolve_storage("sqlite:///studies/x.db", tmp_path) == f"sqlite:///{tmp_path / 'studies' / 'x.db'}"
    monkeypatch.setenv(STORAGE_ENV, "postgresql://team-db/optuna")
    assert resolve_storage(None, tmp_path) == "postgresql://team-db/optuna"
    assert resolve_storage("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    for bad in ("sqlite://", "optuna.db"):
        with pytest.raises(SearchError, match=r"^hydra\.sweeper\.storage: "):
            resolve_storage(bad, tmp_path)


def test_a_storage_password_never_reaches_the_config(monkeypatch):
    monkeypatch.setenv(STORAGE_ENV, "")  # restored after the test, whatever override_credentials_to_environment sets
    monkeypatch.delenv(STORAGE_ENV)
    url = "postgresql://nnlab:s3cret@db.example:5432/optuna"
    assert override_credentials_to_environment(f"hydra.sweeper.storage={url}") == "hydra.sweeper.storage=null"
    assert os.environ[STORAGE_ENV] == url
    assert (
        override_credentials_to_environment("hydra.sweeper.storage=sqlite:///optuna.db")
        == "hydra.sweeper.storage=sqlite:///optuna.db"
    )
    assert redacted(url) == "postgresql://db.example:5432/optuna"


def test_the_search_configs_and_the_slurm_launcher_compose():
    from hydra import compose, initialize_config_dir

    from nnlab.config.paths import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for name in ("mnist_mlp_optuna", "mnist_cnn_optuna", "blobs_optuna"):
            cfg = compose("train", [f"hparams_search={name}"], return_hydra_config=True)
            sweeper = cfg.hydra.sweeper
            assert sweeper.study_name == name and sweeper.sampler.seed == 42
            assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
            space, _ = search_space(sweeper.params, [])
            assert {"optimizer.lr", "data.batch_size"} <= {p.name for p in space}
        cfg = compose(
            "train", ["hparams_search=mnist_cnn_optuna", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"], True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_task, launcher.cpus_per_task, launcher.mem_gb) == ("gpu", 1, 8, 32)
    assert launcher.timeout_min == 60 and launcher.array_parallelism == 8


def running_trial(project: Path, number: int, deadline: float):
    """The MLflow run of trial ``number`` once its job trains (RUNNING, its process recorded)."""
    from nnlab.tracking.run import store_lock

    uri, client = f"sqlite:///{project / 'mlflow.db'}", None
    while time.monotonic() < deadline:
        if client is None and (project / "mlflow.db").exists():
            with store_lock(uri):  # the search may be creating the store: never migrate it twice at once
                client = MlflowClient(tracking_uri=uri)
        if client is not None:
            experiments = [e.experiment_id for e in client.search_experiments()]
            runs = client.search_runs(
                experiments, filter_string=f"tags.optuna_trial = '{number}' and attributes.status = 'RUNNING'"
            )
            if runs and "nnlab.pid" in runs[0].data.tags:
                return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"trial {number} never started training")


def running_trial_pid(project: Path, number: int, deadline: float) -> int:
    """The process id of the job that runs trial ``number`` (its MLflow run's nnlab.pid)."""
    return int(running_trial(project, number, deadline).data.tags["nnlab.pid"])


def wait_for_checkpoints(project: Path, numbers: list[int], deadline: float) -> None:
    """Until each trial's run folder holds its last.ckpt (an epoch finished to continue from)."""
    while time.monotonic() < deadline:
        if all(list((project / "logs" / "multirun").rglob(f"trial_{n}/models/last.ckpt")) for n in numbers):
            return
        time.sleep(0.2)
    raise AssertionError(f"trials {numbers} wrote no last.ckpt")


@pytest.mark.slow  # three joblib pools start (two after a pool is lost): a few minutes on two cores
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_sigkilled_joblib_worker_does_not_take_its_sibling_trial_down(tmp_path):
    """joblib's loky stops every worker of its pool when one dies, so the healthy trial beside the
    killed one is lost with it. Each trial lost with its worker continues as itself: the same
    trial number, folder and MLflow run, from its last finished epoch, its heartbeat kept
    meanwhile. The search ends with its 2 trials COMPLETE and each run's epochs logged once."""
    project = make_project(tmp_path)
    epochs = 24
    proc = search(
        project,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.study_name=killed",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=2",
        "hydra/sweeper/pruner=none",
        f"trainer.max_epochs={epochs}",
        "data.batch_size=16",
        wait=False,
    )
    deadline = time.monotonic() + 300
    before = {n: running_trial(project, n, deadline) for n in (0, 1)}
    wait_for_checkpoints(project, [0, 1], deadline)
    s = study(project, "killed")
    assert [t.state for t in s.trials] == [TrialState.RUNNING] * 2  # both mid-training when one is killed
    os.kill(int(before[0].data.tags["nnlab.pid"]), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "TerminatedWorkerError" in stderr
    for n in (0, 1):
        assert (
            f"nnlab.train: trial {n} was lost with its worker; it continues from its last checkpoint (try 1 of 1)"
            in stderr.splitlines()
        )
    s = study(project, "killed")
    assert [(t.number, t.state) for t in s.trials] == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE)]
    assert "2 continued from their checkpoint after losing their worker" in stdout
    client, [parent], children = tracked(project, "killed")
    assert parent.info.status == "FINISHED"
    assert (parent.data.tags["trials_continued"], parent.data.tags["trials_lost"]) == ("2", "0")
    kids = {int(k.data.tags["optuna_trial"]): k for k in children[parent.info.run_id]}
    assert sorted(kids) == [0, 1] and len(children[parent.info.run_id]) == 2  # one run each, no second one
    for n, trial in enumerate(s.trials):
        run = kids[n]
        assert run.info.run_id == before[n].info.run_id == trial.user_attrs["mlflow_run_id"]
        assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
        assert run.data.tags["nnlab.pid"] != before[n].data.tags["nnlab.pid"]  # a new process went on with it
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))  # none twice, none missing
        assert trial.value == run.data.metrics["best_val_loss"] == min(m.value for m in history)
        train_json = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics" / "train.json").read_text())
        assert train_json["epochs"] == epochs
        [folder] = (project / "logs" / "multirun").rglob(f"trial_{n}")  # its own folder throughout
        assert trial.user_attrs["run_dir"] == str(folder) and not (folder / "models" / "last.ckpt").exists()
    assert not [r for r in client.search_runs([parent.info.experiment_id]) if r.info.status == "RUNNING"]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_killed_search_is_repaired_and_reported_by_the_next_one(tmp_path):
    """SIGKILL of a whole search (its process and the trial it runs) leaves the trial and the
    parent run RUNNING; the next search of the study marks them, each in one line, and runs the
    lost trial again with its values."""
    project = make_project(tmp_path)
    settings = ("hydra.sweeper.study_name=dead", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2")
    first = search(project, *settings, "hydra.sweeper.n_trials=3", "trainer.max_epochs=40", wait=False)
    running_trial_pid(project, 0, time.monotonic() + 300)
    first.send_signal(signal.SIGKILL)  # the basic launcher runs the trial in the search's own process
    first.communicate(timeout=60)
    assert study(project, "dead").trials[0].state == TrialState.RUNNING
    time.sleep(3)  # longer than the grace period: the trial's heartbeat has stopped
    again = search(project, *settings, "hydra.sweeper.n_trials=1", "trainer.max_epochs=2")
    assert again.returncode == 0, again.stderr[-3000:]
    lines = again.stdout.splitlines()
    assert (
        "nnlab.train: trial 0 was left RUNNING by a search that stopped; marked FAIL; it is run again with the same values"
        in lines
    )
    [parent_line] = [line for line in lines if "was left RUNNING by a sweep that died; marked KILLED" in line]
    s = study(project, "dead")
    assert [t.state for t in s.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert s.trials[1].params == s.trials[0].params
    client, [dead, alive], children = tracked(project, "dead")
    assert dead.info.status == "KILLED" and dead.info.run_id in parent_line
    assert alive.info.status == "FINISHED" and alive.data.tags["optuna_trials_before"] == "2"  # with the retry
    [lost] = children[dead.info.run_id]
    assert lost.info.status == "KILLED" and lost.info.run_name == "trial 0"
    assert [k.info.status for k in children[alive.info.run_id]] == ["FINISHED"]


def test_a_grid_sweeps_jobs_are_named_by_their_values_and_its_parent_owns_best_child(tmp_path):
    project = make_project(tmp_path)
    env = venv_env(NNLAB_ROOT=str(project), MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    command = [sys.executable, "-m", "nnlab.train", "-m", "experiment=blobs_linear", "trainer=cpu"]
    command += ["trainer.max_epochs=1", "logger.mlflow.log_model=false", "optimizer.lr=0.01,0.1"]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [parent] = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["optimizer.lr=0.01", "optimizer.lr=0.1"]
    assert parent.info.run_name == "sweep: blobs_linear" and parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.user"] and parent.data.tags["mlflow.source.name"] == "nnlab.train"
    best = max(children, key=lambda r: r.data.metrics["best_val_acc"])
    assert parent.data.tags["best_child"] == best.info.run_id
    assert "best_trial" not in parent.data.tags and "best_value" not in parent.data.metrics
