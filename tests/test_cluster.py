"""A real single-node Slurm (Debian's slurm-wlm, munge, slurmdbd on MariaDB) started on loopback
by ``python -m nnlab.cluster up`` in a temporary folder, once for this file, and stopped after.
Searches, sweeps and trainings go through sbatch and srun on the blobs; sacct is read back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from nnlab.data import blobs
from nnlab.services import slurm
from nnlab.services.settings import free_port

from helpers import REPO, run_module, venv_env

# A trial or sweep job on this cluster: no GPU, one core, 1 GB (the launcher's defaults are a GPU node's).
CPU_JOB = (
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_task=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
)


def cluster_cli(command: str, folder: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return run_module("nnlab.cluster", command, "--dir", str(folder), cwd=folder.parent, timeout=timeout, **env)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The cluster on free ports, up for the whole session."""
    folder = tmp_path_factory.mktemp("slurm") / ".cluster"
    slurm.Cluster.with_free_ports(folder).write()
    started = time.perf_counter()
    up = cluster_cli("up", folder)
    print(f"\ncluster up (first start) in {time.perf_counter() - started:.1f} s")
    c = slurm.Cluster.load(folder)
    try:
        assert up.returncode == 0, up.stderr
        yield c
    finally:
        down = cluster_cli("down", folder)
        assert down.returncode == 0, down.stderr
        assert all(d.pid_file(c).pid() is None for d in slurm.DAEMONS)


def slurm_env(cluster: slurm.Cluster, **extra: str) -> dict[str, str]:
    """A shell after ``source .cluster/env``."""
    return venv_env(**cluster.client_env(), **extra)


def client(cluster: slurm.Cluster, *argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, env=slurm_env(cluster), timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def accounted(cluster: slurm.Cluster, since: float) -> dict[str, tuple[str, str]]:
    """sacct's jobs (allocations, not steps) started after ``since``: {id: (name, state)}."""
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 1))
    out = client(cluster, "sacct", "-X", "-n", "-P", "-S", start, "-o", "JobID,JobName,State")
    rows = [line.split("|") for line in out.splitlines() if line]
    return {job: (name, state) for job, name, state in rows}


def finished_jobs(cluster: slurm.Cluster, since: float, count: int, timeout: float = 60) -> dict[str, tuple[str, str]]:
    """``accounted`` once ``count`` jobs have ended (a job's result is on disk a moment before
    Slurm records its end)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = accounted(cluster, since)
        ended = [state for _, state in jobs.values() if state not in ("PENDING", "RUNNING", "REQUEUED")]
        if len(ended) >= count or time.monotonic() > deadline:
            return jobs
        time.sleep(0.5)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    blobs.write(root / "data" / "blobs", blobs.make(500, 3, 2, 42, 0.2))
    (root / "params.yaml").write_text("{}\n")
    return root


def train(cluster, project, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = slurm_env(cluster, NNLAB_ROOT=str(project), MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    env.pop("NNLAB_OPTUNA_STORAGE", None)
    multirun = [a for a in args if a == "-m"]
    overrides = [a for a in args if a != "-m"]
    command = [sys.executable, "-m", "nnlab.train", *multirun, "trainer=cpu", "trainer.enable_progress_bar=false"]
    command += overrides
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def mlflow_runs(project: Path, filter_string: str):
    mlflow = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in mlflow.search_experiments()]
    return mlflow, mlflow.search_runs(experiments, filter_string=filter_string)


# ---- the cluster itself ------------------------------------------------------------------------


def test_up_is_idempotent_loopback_only_and_sacct_lists_finished_jobs(cluster):
    import psutil

    before = {d.name: d.pid_file(cluster).pid() for d in slurm.DAEMONS}
    again = cluster_cli("up", cluster.dir)
    assert again.returncode == 0, again.stderr
    assert {d.name: d.pid_file(cluster).pid() for d in slurm.DAEMONS} == before  # nothing restarted
    status = cluster_cli("status", cluster.dir)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [*(d.name for d in slurm.DAEMONS), f"node {cluster.node}"]
    assert lines[-1] == f"node {cluster.node}: idle, partition {slurm.PARTITION}"

    # every daemon listens on 127.0.0.1 only, on the ports of .cluster/env (none of Slurm's defaults)
    listening = set()
    for pid in before.values():
        listening |= {c.laddr for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert {addr.ip for addr in listening} == {"127.0.0.1"}
    assert set(cluster.ports().values()) <= {addr.port for addr in listening}
    assert not {6817, 6818, 6819} & {addr.port for addr in listening}

    # the node advertises this machine's cores and memory
    node = client(cluster, "scontrol", "show", "node", cluster.node)
    hardware = slurm.node_hardware()
    assert f"CPUTot={os.cpu_count()}" in node and f"RealMemory={hardware['RealMemory']}" in node

    # sourcing the env file is all a shell needs; srun runs tasks, sacct lists them with states
    env_text = cluster.env_file.read_text()
    assert f"export SLURM_CONF={cluster.conf}" in env_text
    started = time.time()
    assert client(cluster, "srun", "-n", "2", "-J", "hello", "echo", "hi").split() == ["hi", "hi"]
    failed = subprocess.run(["srun", "-J", "fails", "false"], env=slurm_env(cluster), capture_output=True)
    assert failed.returncode != 0
    states = {name: state for name, state in finished_jobs(cluster, started, 2).values()}
    assert states["hello"] == "COMPLETED" and states["fails"] == "FAILED"


def test_failures_are_one_line_naming_the_daemon_and_its_log(tmp_path, cluster):
    # a port in use (the running cluster's controller port) is named before anything starts
    folder = tmp_path / ".cluster"
    clash = slurm.Cluster(folder, cluster.ctld_port, free_port(), free_port(), free_port())
    clash.write()
    up = cluster_cli("up", folder)
    errors = [line for line in up.stderr.splitlines() if line.startswith("nnlab.cluster: error:")]
    assert up.returncode == 1 and len(errors) == 1 and "Traceback" not in up.stderr, up.stderr
    assert errors[0] == (
        f"nnlab.cluster: error: slurmctld: port {cluster.ctld_port} is in use by another program; "
        f"stop it or change it in {folder / 'env'}"
    )
    assert all(d.pid_file(clash).pid() is None for d in slurm.DAEMONS)  # nothing was started

    # a daemon that died is named with its log; up starts it again
    slurmd_pid = slurm.SLURMD.pid_file(cluster).pid()
    os.kill(slurmd_pid, signal.SIGKILL)
    status = cluster_cli("status", cluster.dir)
    assert status.returncode == 3
    assert f"slurmd: stopped (log: {cluster.logs / 'slurmd.log'})" in status.stdout.splitlines()
    assert cluster_cli("up", cluster.dir).returncode == 0
    assert slurm.SLURMD.pid_file(cluster).pid() not in (None, slurmd_pid)
    assert slurm.node_state(cluster) == "idle"

    # a program that is not installed names its Debian package
    with pytest.raises(slurm.ServiceError) as missing:
        slurm.program("slurmctld-not-installed")
    assert str(missing.value) == (
        "slurmctld-not-installed: program not found "
        "(Debian package slurmctld-not-installed: apt-get install slurmctld-not-installed)"
    )
    status = cluster_cli("status", folder)
    assert status.returncode == 3 and "munge: stopped" in status.stdout


# ---- searches and sweeps as Slurm jobs ---------------------------------------------------------


def test_an_optuna_search_runs_every_trial_through_sbatch(cluster, project):
    started = time.time()
    run = train(
        cluster,
        project,
        "-m",
        "hparams_search=blobs_optuna",
        "trainer.max_epochs=2",
        *CPU_JOB,
        "hydra.launcher.array_parallelism=2",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.study_name=slurm_search",
        "hydra/sweeper/pruner=none",  # every trial runs to the end: which one a pruner stops depends on timing
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Bypassing sacct error" not in run.stderr + run.stdout
    jobs = finished_jobs(cluster, started, 4)
    assert len(jobs) == 4 and {state for _, state in jobs.values()} == {"COMPLETED"}, jobs
    assert all("_" in job for job in jobs)  # array tasks: two arrays of two

    study = optuna.load_study(study_name="slurm_search", storage=f"sqlite:///{project / 'optuna.db'}")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    _, runs = mlflow_runs(project, "tags.optuna_study = 'slurm_search'")
    [parent] = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(k.data.tags["optuna_trial"]) for k in kids) == [0, 1, 2, 3]
    assert all(k.info.status == "FINISHED" for k in kids) and parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == study.best_value
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {k.info.run_id for k in kids}


def test_a_grid_sweep_runs_every_job_through_sbatch(cluster, project):
    started = time.time()
    run = train(
        cluster,
        project,
        "-m",
        "experiment=blobs_linear",
        "name=slurm_grid",
        "trainer.max_epochs=2",
        "optimizer.lr=0.01,0.1",
        *CPU_JOB,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Bypassing sacct error" not in run.stderr + run.stdout
    jobs = finished_jobs(cluster, started, 2)
    assert len(jobs) == 2 and {state for _, state in jobs.values()} == {"COMPLETED"}, jobs
    _, [parent] = mlflow_runs(project, "attributes.run_name = 'sweep: slurm_grid'")
    _, kids = mlflow_runs(project, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(k.data.params["optimizer.lr"] for k in kids) == ["0.01", "0.1"]
    assert all(k.info.status == "FINISHED" and k.data.metrics["test_acc"] > 0.5 for k in kids)
    assert parent.info.status == "FINISHED"


# ---- one run under srun: data-parallel over two tasks ------------------------------------------

DDP = ("experiment=blobs_linear", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=2")


def run_folders(project: Path, name: str) -> list[Path]:
    return sorted(p for p in (project / "logs" / "runs" / name).iterdir() if p.is_dir())


def test_srun_with_two_tasks_trains_one_run_like_lightnings_own_ddp(cluster, project):
    env = slurm_env(cluster, NNLAB_ROOT=str(project), MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    command = [sys.executable, "-m", "nnlab.train", *DDP, "trainer.enable_progress_bar=false"]
    srun = ["srun", "--ntasks-per-node=2", "--cpus-per-task=1", "-J", "ddp_srun"]
    under_srun = subprocess.Popen(
        [*srun, *command, "name=ddp_srun"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    own = subprocess.run([*command, "name=ddp_own"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out, err = under_srun.communicate(timeout=600)
    assert under_srun.returncode == 0, err[-3000:]
    assert own.returncode == 0, own.stderr[-3000:]
    assert "srun` command is available" not in own.stderr + err  # Lightning's hint, silenced

    [folder] = run_folders(project, "ddp_srun")  # both tasks wrote into one folder
    assert folder.name.startswith("slurm-") and folder.name.endswith(".0")
    assert sorted(p.name for p in (folder / "models").glob("*.ckpt")) == ["best.ckpt"]
    [own_folder] = run_folders(project, "ddp_own")
    test_json = json.loads((folder / "metrics" / "test.json").read_text())
    assert test_json == json.loads((own_folder / "metrics" / "test.json").read_text())
    assert (folder / "plots" / "history.csv").read_text().count("\n") == 3  # header + 2 epochs

    mlflow, runs = mlflow_runs(project, "tags.experiment = 'ddp_srun'")
    [run] = runs
    assert run.info.status == "FINISHED" and run.data.tags["slurm_restart_count"] == "0"
    assert run.data.tags["slurm_job_id"] == folder.name.removeprefix("slurm-").removesuffix(".0")
    assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
    assert run.data.metrics["test_acc"] == test_json["test_acc"]


@pytest.mark.slow  # beyond a minute; the srun test covers one run over two tasks
def test_submitit_with_two_tasks_per_node_trains_one_run(cluster, project):
    started = time.time()
    run = train(
        cluster,
        project,
        "-m",
        *DDP,
        "name=ddp_submitit",
        *CPU_JOB,
        "hydra.launcher.tasks_per_node=2",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = {job: state for job, (name, state) in finished_jobs(cluster, started, 1).items() if name == "train"}
    [(job, state)] = jobs.items()  # sacct's window may also show the job that ended as this began
    assert state == "COMPLETED"
    [folder] = (project / "logs" / "multirun" / "ddp_submitit").glob("*/0")
    assert sorted(p.name for p in (folder / "models").glob("*.ckpt")) == ["best.ckpt"]
    if not (project / "logs" / "runs" / "ddp_own").exists():  # run alone: Lightning's own DDP first
        own = train(cluster, project, *DDP, "name=ddp_own")
        assert own.returncode == 0, own.stderr[-3000:]
    [own_folder] = run_folders(project, "ddp_own")
    assert json.loads((folder / "metrics" / "test.json").read_text()) == json.loads(
        (own_folder / "metrics" / "test.json").read_text()
    )
    _, [parent] = mlflow_runs(project, "attributes.run_name = 'sweep: ddp_submitit'")
    _, [child] = mlflow_runs(project, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert child.info.status == "FINISHED" and child.data.tags["slurm_job_id"] == job


# ---- preemption, time limits and requeues lose at most the epoch in progress -------------------

SLOW = ("experiment=blobs_linear", "trainer.max_epochs=5", "data.batch_size=1")


@pytest.fixture(scope="module")
def slow_project(tmp_path_factory):
    """Blobs large enough for epochs of a second or so: a signal lands between two of them."""
    root = tmp_path_factory.mktemp("slow")
    blobs.write(root / "data" / "blobs", blobs.make(2000, 3, 2, 42, 0.2))
    (root / "params.yaml").write_text("{}\n")
    return root


def submit(cluster, project: Path, name: str) -> str:
    """An sbatch job that trains ``name`` in one srun step, requeueable, warned with USR1."""
    script = project / f"{name}.sh"
    overrides = " ".join([*SLOW, "trainer=cpu", "trainer.enable_progress_bar=false", f"name={name}"])
    script.write_text(
        "#!/bin/bash\n#SBATCH --requeue\n#SBATCH --signal=USR1@60\n#SBATCH --open-mode=append\n"
        f"srun {sys.executable} -m nnlab.train {overrides}\n"
    )
    env = slurm_env(cluster, NNLAB_ROOT=str(project), MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    done = subprocess.run(
        ["sbatch", "--parsable", "-J", name, "-o", str(project / f"{name}-%j.out"), str(script)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def wait_for(path: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def wait_gone(cluster, *jobs: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while client(cluster, "squeue", "-h", "-o", "%i", "-j", ",".join(jobs)).split():
        assert time.monotonic() < deadline, f"jobs {jobs} still queued"
        time.sleep(1)


def history(folder: Path) -> list[list[str]]:
    """history.csv without its timing columns (seconds, samples per second)."""
    rows = [line.split(",") for line in (folder / "plots" / "history.csv").read_text().splitlines()]
    keep = [i for i, key in enumerate(rows[0]) if "second" not in key]
    return [[row[i] for i in keep] for row in rows]


@pytest.mark.slow  # beyond a minute; the requeued-trial test covers a requeue in the default suite
def test_a_warned_or_requeued_job_continues_its_run_and_ends_as_if_never_stopped(cluster, slow_project):
    project = slow_project
    started = time.time()
    warned, requeued = submit(cluster, project, "warned"), submit(cluster, project, "requeued")
    # after the first finished epoch: the warning signal to one, a plain requeue to the other
    wait_for(project / "logs" / "runs" / "warned" / f"slurm-{warned}.0" / "models" / "last.ckpt")
    client(cluster, "scancel", "--signal=USR1", warned)
    wait_for(project / "logs" / "runs" / "requeued" / f"slurm-{requeued}.0" / "models" / "last.ckpt")
    client(cluster, "scontrol", "requeue", requeued)
    # the same training never interrupted, while the two wait to start again
    plain = train(cluster, project, *SLOW, "name=plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    wait_gone(cluster, warned, requeued)

    jobs = finished_jobs(cluster, started, 2)
    assert jobs[warned] == ("warned", "COMPLETED") and jobs[requeued] == ("requeued", "COMPLETED")
    assert "SIGUSR1: requeueing Slurm job" in (project / f"warned-{warned}.out").read_text()
    [reference] = run_folders(project, "plain")
    mlflow, [plain_run] = mlflow_runs(project, "tags.experiment = 'plain'")
    for name, job in (("warned", warned), ("requeued", requeued)):
        [folder] = run_folders(project, name)
        assert folder.name == f"slurm-{job}.0" and not (folder / "models" / "last.ckpt").exists()
        assert history(folder) == history(reference)  # epochs 1..5, no gap, no repeat, same values
        assert (folder / "metrics" / "test.json").read_text() == (reference / "metrics" / "test.json").read_text()
        _, [run] = mlflow_runs(project, f"tags.experiment = '{name}'")  # one run, continued
        assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
        assert (run.data.tags["slurm_job_id"], run.data.tags["slurm_restart_count"]) == (job, "1")
        steps = [m.step for m in mlflow.get_metric_history(run.info.run_id, "val_loss")]
        assert steps == [1, 2, 3, 4, 5]
        assert run.data.metrics["test_acc"] == plain_run.data.metrics["test_acc"]
        assert run.data.metrics["best_val_loss"] == plain_run.data.metrics["best_val_loss"]


def test_a_requeued_trial_of_an_optuna_search_continues_the_same_trial(cluster, slow_project):
    project = slow_project
    env = slurm_env(cluster, NNLAB_ROOT=str(project), MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    env.pop("NNLAB_OPTUNA_STORAGE", None)
    search = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nnlab.train",
            "-m",
            "hparams_search=blobs_optuna",
            "trainer=cpu",
            "trainer.max_epochs=5",
            "hydra.sweeper.params={data.batch_size:1}",  # epochs of a second or so
            "hydra/sweeper/pruner=none",
            *CPU_JOB,
            "hydra.launcher.array_parallelism=2",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.study_name=requeued_trial",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not list((project / "logs" / "multirun").glob("blobs_search/*/trial_0/models/last.ckpt")):
            assert time.monotonic() < deadline and search.poll() is None, "trial 0 finished no epoch"
            time.sleep(0.1)
        array_tasks = client(cluster, "squeue", "-h", "-o", "%i", "-n", "train").split()
        task = next(t for t in array_tasks if t.endswith("_0"))  # the first job of the batch: trial 0
        client(cluster, "scontrol", "requeue", task)
        out, err = search.communicate(timeout=600)
    finally:
        search.kill()
    assert search.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name="requeued_trial", storage=f"sqlite:///{project / 'optuna.db'}")
    assert sorted(t.number for t in study.trials) == [0, 1]  # continued, not failed and retried
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert sorted(study.trials[0].intermediate_values) == [1, 2, 3, 4, 5]
    mlflow, kids = mlflow_runs(project, "tags.optuna_study = 'requeued_trial' and tags.optuna_trial = '0'")
    [run] = [k for k in kids if k.data.tags.get("sweep") != "parent"]
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert run.data.tags["slurm_job_id"] == task and run.data.tags["slurm_restart_count"] == "1"
    assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3, 4, 5]
    assert study.trials[0].user_attrs["mlflow_run_id"] == run.info.run_id


@pytest.mark.slow  # beyond a minute, like its joblib twin in tests/test_search.py
def test_a_sigkilled_trial_in_a_slurm_job_does_not_stall_the_study(cluster, slow_project):
    import psutil

    project = slow_project
    env = slurm_env(cluster, NNLAB_ROOT=str(project), MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    env.pop("NNLAB_OPTUNA_STORAGE", None)
    search = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nnlab.train",
            "-m",
            "hparams_search=blobs_optuna",
            "trainer=cpu",
            "trainer.max_epochs=3",
            "hydra.sweeper.params={data.batch_size:1}",
            "hydra/sweeper/pruner=none",
            *CPU_JOB,
            "hydra.launcher.array_parallelism=2",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.study_name=killed_trial",
            "hydra.sweeper.heartbeat_interval=2",
            "hydra.sweeper.grace_period=6",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        folders = project / "logs" / "multirun"
        while not list(folders.glob("blobs_search/*/trial_0/models/last.ckpt")):
            assert time.monotonic() < deadline and search.poll() is None, "trial 0 finished no epoch"
            time.sleep(0.1)
        [worker] = [
            p
            for p in psutil.process_iter(["cmdline", "environ"])
            if (p.info["cmdline"] or [""])[0] == sys.executable  # the task, not srun
            and "submitit.core._submit" in " ".join(p.info["cmdline"])
            and (p.info["environ"] or {}).get("SLURM_ARRAY_TASK_ID") == "0"
            and (p.info["environ"] or {}).get("NNLAB_ROOT") == str(project)
        ]
        worker.kill()  # SIGKILL: no handler runs, nothing is told
        out, err = search.communicate(timeout=600)
    finally:
        search.kill()
    assert search.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="killed_trial", storage=f"sqlite:///{project / 'optuna.db'}")
    # The killed task's process was on this host and is gone: the sweeper launches trial 0 again
    # as itself, from its checkpoint (on another node its silent heartbeat would fail and retry it).
    assert {t.number: t.state for t in study.trials} == {0: TrialState.COMPLETE, 1: TrialState.COMPLETE}
    assert "1 continued from their checkpoint after losing their worker" in out
    mlflow = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    run = mlflow.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert sorted(m.step for m in mlflow.get_metric_history(run.info.run_id, "val_loss")) == [1, 2, 3]
