"""Team mode with the real services on loopback ports: PostgreSQL, SeaweedFS's S3 gateway and an
MLflow tracking server, started by ``python -m nnlab.team up`` in a temporary folder and stopped
after. Trainings, DVC and ``mlflow models serve`` run as real processes against them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from nnlab.data import blobs, mnist
from nnlab.services import objectstore, postgres, stack, tracking_server
from nnlab.services.process import PidFile
from nnlab.services.settings import ServiceError, Settings, free_port

from helpers import REPO, run_module, synthetic_digits, venv_env, write_idx_dir

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "samples_per_second")
SERVER_ERRORS = re.compile(r'HTTP/1\.[01]" 5\d\d|Traceback|\bERROR\b|\bCRITICAL\b')
# A failing request is not retried (MLflow retries a server error 7 times, for minutes).
FAST_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


def team_cli(command: str, folder: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_module("nnlab.team", command, "--dir", str(folder), cwd=folder.parent, timeout=timeout)


def service_pids(settings: Settings) -> dict[str, int | None]:
    return {s.NAME: s.pid_file(settings).pid() for s in stack.SERVICES}


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """The three services on free ports. Their folder lies under pytest's 0700 temporary root,
    which the postgres user cannot enter: PostgreSQL's data goes to the fallback folder."""
    folder = tmp_path_factory.mktemp("team") / ".services"
    Settings.with_free_ports(folder).write()
    started = time.perf_counter()
    up = team_cli("up", folder)
    print(f"\nservices up (first start) in {time.perf_counter() - started:.1f} s")
    settings = Settings.load(folder)
    fallback = (folder / "postgres").resolve()
    try:
        assert up.returncode == 0, up.stderr
        yield settings
    finally:
        down = team_cli("down", folder)
        assert down.returncode == 0, down.stderr
        assert all(pid is None for pid in service_pids(settings).values())
        if fallback != folder / "postgres":
            shutil.rmtree(fallback, ignore_errors=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A project root with synthetic MNIST and the blobs, prepared."""
    root = tmp_path_factory.mktemp("workspace")
    md5s = write_idx_dir(root / "raw")
    mnist.prepare(root / "data" / "mnist", mnist.from_dir(root / "raw"), "dir", val_size=100, seed=0, expected_md5=md5s)
    blobs.write(root / "data" / "blobs", blobs.make(500, 3, 2, 42, 0.2))
    (root / "params.yaml").write_text("{}\n")
    return root


def client_env(settings: Settings, root: Path, **extra: str) -> dict[str, str]:
    """A teammate's shell after ``source .services/env``: no S3 credentials needed (proxied)."""
    env = {k: v for k, v in settings.client_env().items() if not k.startswith("NNLAB_S3_")}
    return {**env, "NNLAB_ROOT": str(root), **extra}


def train(root: Path, settings: Settings, *overrides: str, timeout: int = 300, **env: str):
    return run_module(
        "nnlab.train",
        "trainer=cpu",
        "trainer.enable_progress_bar=false",
        *overrides,
        cwd=root,
        timeout=timeout,
        **client_env(settings, root, **env),
    )


def runs_named(uri: str, name: str):
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]  # one per data set: nnlab-<data>
    return client.search_runs(experiments, filter_string=f"attributes.run_name = '{name}'")


def log_offset(settings: Settings) -> int:
    return (settings.logs / "mlflow.log").stat().st_size


def server_errors(settings: Settings, offset: int) -> list[str]:
    with (settings.logs / "mlflow.log").open(errors="replace") as log:
        log.seek(offset)
        return [line for line in log.read().splitlines() if SERVER_ERRORS.search(line)]


def s3_keys(settings: Settings, bucket: str, prefix: str = "") -> dict[str, int]:
    pages = objectstore.client(settings).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def one_error_line(proc: subprocess.CompletedProcess, prog: str = "nnlab.train") -> str:
    """The process failed with exactly one ``<prog>: error: ...`` line on stderr (warnings of
    libraries aside) and no traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def labels_of(output) -> np.ndarray:
    """Predicted labels from what a pyfunc model or the scoring server returns: logits
    ``(n, classes)``, or records / a frame / a dict with a ``label`` (or ``labels``) entry."""
    import pandas as pd

    if isinstance(output, dict) and "predictions" in output:
        output = output["predictions"]
    if isinstance(output, pd.DataFrame):
        column = next(c for c in ("label", "labels") if c in output.columns)
        return np.asarray(output[column], dtype=int)
    if isinstance(output, dict):
        key = next(k for k in ("label", "labels") if k in output)
        return np.asarray(output[key], dtype=int).ravel()
    if isinstance(output, list) and output and isinstance(output[0], dict):
        key = next(k for k in ("label", "labels") if k in output[0])
        return np.asarray([row[key] for row in output], dtype=int)
    array = np.asarray(output)
    return array.argmax(axis=1) if array.ndim == 2 else array.astype(int)


# ---- the services themselves ---------------------------------------------------------------


def test_up_is_idempotent_loopback_only_with_passwords(team):
    import psutil

    before = service_pids(team)
    started = time.perf_counter()
    again = team_cli("up", team.dir)
    assert again.returncode == 0, again.stderr
    assert time.perf_counter() - started < 30 and service_pids(team) == before  # nothing restarted
    status = team_cli("status", team.dir)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["postgres", "s3", "mlflow"]
    assert all(": running (pid " in line for line in lines), lines

    env = team.env_file.read_text()
    assert team.env_file.stat().st_mode & 0o777 == 0o600
    for key in ("MLFLOW_TRACKING_URI", "NNLAB_OPTUNA_STORAGE", "PGPASSWORD", "NNLAB_S3_ENDPOINT_URL"):
        assert f"export {key}=" in env
    assert f"export NNLAB_OPTUNA_STORAGE=postgresql+psycopg2://nnlab@127.0.0.1:{team.pg_port}/optuna" in env
    # the database user cannot enter pytest's 0700 folders: the data lives in the fallback
    assert (team.dir / "postgres").is_symlink() and (team.dir / "postgres" / "data" / "PG_VERSION").is_file()

    listening = set()
    for pid in before.values():
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            listening |= {c.laddr for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert {addr.ip for addr in listening} == {"127.0.0.1"}
    assert {team.pg_port, team.s3_port, team.mlflow_port} <= {addr.port for addr in listening}


def test_a_training_through_the_tracking_server_lands_in_postgres_and_the_object_store(team, workspace):
    offset = log_offset(team)
    proc = train(workspace, team, "experiment=blobs_linear", "name=team_run", "trainer.max_epochs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = runs_named(team.tracking_uri, "team_run")
    client = MlflowClient(tracking_uri=team.tracking_uri)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: clients never see S3
    assert run.data.params["trainer.max_epochs"] == "3" and run.data.params["model.class"] == "LinearClassifier"
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
    assert run.data.metrics["test_acc"] > 0.9
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "history.csv", "curves.png", "checkpoint"} <= listed
    history = client.download_artifacts(run.info.run_id, "history.csv", str(workspace / "downloaded"))
    assert len(Path(history).read_text().splitlines()) == 4  # header + 3 epochs

    import mlflow

    mlflow.set_tracking_uri(team.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/team_run")  # named after the run
        points = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
        assert len(labels_of(model.predict(points))) == 5
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)

    # the objects themselves, listed through the S3 API with the store's own credentials
    keys = s3_keys(team, team.mlflow_bucket)
    run_prefix = f"artifacts/{run.info.experiment_id}/{run.info.run_id}/artifacts/"
    assert {f"{run_prefix}{name}" for name in ("config.yaml", "history.csv", "checkpoint/best.ckpt")} <= set(keys)
    assert keys[f"{run_prefix}checkpoint/best.ckpt"] > 1000
    logged = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert f"artifacts/{run.info.experiment_id}/models/{logged[0].model_id}/artifacts/MLmodel" in keys
    assert server_errors(team, offset) == []


def _train_writer(args) -> tuple[int, subprocess.CompletedProcess]:
    """One of the writers: every epoch's metrics, the params, the artifacts (checkpoint, plots,
    config); no logged model (its ~70 code files per run would measure uploads, not the store)."""
    index, root, settings = args
    return index, train(
        root,
        settings,
        "experiment=blobs_linear",
        f"name=writer{index:02d}",
        f"seed={index}",
        "trainer.max_epochs=5",
        "logger.mlflow.log_model=false",
        timeout=1200,
    )


@pytest.mark.slow
def test_sixteen_concurrent_trainings_against_the_server(team, workspace):
    writers, epochs = 16, 5
    started = time.perf_counter()
    index, solo = _train_writer((99, workspace, team))  # one alone, for scale
    assert solo.returncode == 0, solo.stderr[-2000:]
    print(f"\none training alone: {time.perf_counter() - started:.1f} s")
    offset = log_offset(team)
    started = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(_train_writer, [(i, workspace, team) for i in range(writers)]))
    wall = time.perf_counter() - started
    with (team.logs / "mlflow.log").open(errors="replace") as log:
        log.seek(offset)
        requests = sum(1 for line in log if '" 200' in line)
    print(
        f"\n{writers} concurrent trainings: {wall:.1f} s wall, {writers / wall:.3f} runs/s, "
        f"{requests} requests answered ({requests / wall:.1f}/s), load average {os.getloadavg()[0]:.1f}"
    )
    for index, proc in results:
        assert proc.returncode == 0, f"writer {index}: {proc.stderr[-2000:]}"
    client = MlflowClient(tracking_uri=team.tracking_uri)
    for index in range(writers):
        (run,) = runs_named(team.tracking_uri, f"writer{index:02d}")
        assert run.info.status == "FINISHED"
        for key in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (index, key, steps)
    assert server_errors(team, offset) == []

    # the server alone: 16 client threads writing runs like a training does, without training
    offset = log_offset(team)
    started = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        ids = list(pool.map(lambda i: _write_run(team.tracking_uri, f"client{i:03d}", epochs), range(4 * writers)))
    wall = time.perf_counter() - started
    print(f"server alone: {len(ids)} runs by {writers} threads in {wall:.1f} s, {len(ids) / wall:.2f} runs/s")
    assert all(client.get_run(i).info.status == "FINISHED" for i in ids)
    assert server_errors(team, offset) == []


def _write_run(uri: str, name: str, epochs: int) -> str:
    """What one training sends the server: a run, its params, one batch of metrics per epoch,
    a small artifact, the end."""
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.get_experiment_by_name("nnlab-blobs").experiment_id, run_name=name)
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(f"p{k}", str(k)) for k in range(40)])
    for epoch in range(1, epochs + 1):
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(key, 0.5, now, epoch) for key in EPOCH_METRICS])
    client.log_text(run_id, "epoch,val_acc\n", "history.csv")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_optuna_studies_share_the_database_named_by_the_env_file(team, monkeypatch):
    """What a sweep worker on any machine does with NNLAB_OPTUNA_STORAGE and PGPASSWORD."""
    import optuna

    for key, value in team.client_env().items():
        monkeypatch.setenv(key, value)
    storage = os.environ["NNLAB_OPTUNA_STORAGE"]
    assert "@" in storage and team.pg_password not in storage  # the URL carries no secret
    first = optuna.create_study(study_name="shared", storage=storage, load_if_exists=True)
    first.optimize(lambda trial: trial.suggest_float("x", -1, 1) ** 2, n_trials=3)
    second = optuna.load_study(study_name="shared", storage=storage)  # another worker's view
    assert len(second.trials) == 3
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    with pytest.raises(Exception, match="password authentication failed"):
        optuna.load_study(study_name="shared", storage=storage)


# ---- DVC remote ----------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, timeout=60)


def _dvc(repo: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], cwd=repo, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_dvc_push_then_a_fresh_clone_pulls_and_has_nothing_to_run(team, tmp_path):
    """A blobs-only configuration of the real pipeline (its blobs, train and evaluate stages):
    repro, push to the team remote; a second clone pulls, `dvc status` is clean and `dvc repro`
    runs no stage."""
    repo = tmp_path / "origin"
    repo.mkdir()
    for name in ("conf", "src", ".gitignore", ".dvcignore"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, repo / name)
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    pipeline = {"stages": {k: v for k, v in pipeline["stages"].items() if k in ("prepare_blobs", "train", "evaluate")}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["experiments"] = {"blobs_linear": params["experiments"]["blobs_linear"]}
    params["train_overrides"] = "trainer.max_epochs=3 trainer.enable_progress_bar=false trainer=cpu"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = venv_env(**{k: v for k, v in team.client_env().items() if k == "MLFLOW_TRACKING_URI"})
    for var in ("NNLAB_ROOT", "DVC_ROOT"):
        env.pop(var, None)
    _git(repo, "init", "-q")
    _dvc(repo, "init", "-q", env=env)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the committed remote 'team'
    stack.configure_dvc_remote(repo, team)  # endpoint of this test's store and keys: config.local
    assert "secret_access_key" not in (repo / ".dvc" / "config").read_text()

    started = time.perf_counter()
    _dvc(repo, "repro", env=env)
    repro_seconds = time.perf_counter() - started
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "pipeline")
    before = s3_keys(team, team.dvc_bucket)
    pushed = _dvc(repo, "push", "-r", "team", env=env)
    objects = {k: v for k, v in s3_keys(team, team.dvc_bucket).items() if k not in before}
    assert objects, pushed.stdout
    size = sum(objects.values())

    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "models" / "blobs_linear").exists() and not (clone / "data" / "blobs").exists()
    stack.configure_dvc_remote(clone, team)
    started = time.perf_counter()
    _dvc(clone, "pull", "-r", "team", env=env)
    pull_seconds = time.perf_counter() - started
    assert (clone / "models" / "blobs_linear" / "best.ckpt").read_bytes() == (
        repo / "models" / "blobs_linear" / "best.ckpt"
    ).read_bytes()
    assert "Data and pipelines are up to date" in _dvc(clone, "status", env=env).stdout
    assert "Running stage" not in _dvc(clone, "repro", env=env).stdout
    print(
        f"\ndvc round trip: {len(objects)} objects, {size / 1e6:.2f} MB pushed and pulled "
        f"(repro {repro_seconds:.0f} s, pull {pull_seconds:.1f} s)"
    )


# ---- serving -------------------------------------------------------------------------------


def _readme_curl() -> str:
    text = (REPO / "docs" / "deploy.md").read_text()
    match = re.search(r"^(curl .*?/invocations.*)$", text, re.M)
    assert match, "docs/deploy.md has no curl example for /invocations"
    return match.group(1)


def test_the_served_champion_answers_like_nnlab_predict(team, workspace, tmp_path, monkeypatch, capsys):
    trained = train(
        workspace,
        team,
        "experiment=mnist_cnn",
        "trainer.max_epochs=1",
        "logger.mlflow.register=true",
        "outputs=run",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    uri = "models:/nnlab-mnist_cnn@champion"
    port = free_port()
    env = venv_env(**client_env(team, workspace))
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "serve.log").open("w"),
        start_new_session=True,
    )
    try:
        images, _ = synthetic_digits(8, seed=5)
        files = []
        for i, image in enumerate(images):
            files.append(tmp_path / f"digit{i}.png")
            Image.fromarray(image).resize((56, 56)).save(files[-1])
        import mlflow

        from nnlab.data.images import load_digit

        mlflow.set_tracking_uri(team.tracking_uri)
        try:
            model = mlflow.pyfunc.load_model(uri)
            # the images as the model's signature takes them: (n, 28, 28), or (n, 1, 28, 28)
            batch = np.stack([load_digit(str(f)) for f in files]).astype(np.float32)
            spec = model.metadata.get_input_schema()
            if spec is not None and len(getattr(spec.inputs[0], "shape", ()) or ()) == 4:
                batch = batch[:, None]
            local = labels_of(model.predict(batch))
        finally:
            mlflow.set_tracking_uri(None)
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.time() < deadline, "mlflow models serve did not answer within 180 s"
                time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": batch.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            served = labels_of(json.loads(urllib.request.urlopen(request, timeout=60).read()))
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"/invocations: {exc.code}: {exc.read()[:2000]!r}") from None

        from nnlab import predict

        for key, value in client_env(team, workspace).items():
            monkeypatch.setenv(key, value)
        try:
            assert predict.main(["--json", "--model", uri, *map(str, files)]) == 0
        finally:
            mlflow.set_tracking_uri(None)
        by_predict = np.asarray([r["label"] for r in json.loads(capsys.readouterr().out)])

        assert len(served) == len(files)
        assert served.tolist() == by_predict.tolist() == local.tolist()

        # the docs' curl example (docs/deploy.md), as written (only the port differs)
        curl = _readme_curl().replace("5001", str(port))
        answer = subprocess.run(curl, shell=True, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert answer.returncode == 0, answer.stderr
        assert len(labels_of(json.loads(answer.stdout))) == 1
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_make_serve_runs_the_champion_on_loopback():
    dry = subprocess.run(["make", "-n", "serve", "SERVE_PORT=5999"], cwd=REPO, capture_output=True, text=True)
    command = " ".join(dry.stdout.split()).replace("\\ ", "")
    assert "mlflow models serve -m models:/nnlab-mnist_cnn@champion --env-manager local -h 127.0.0.1 -p 5999" in command


# ---- bad input -----------------------------------------------------------------------------


def test_a_wrong_password_is_one_line_naming_the_service(team, tmp_path):
    with pytest.raises(ServiceError) as database:
        postgres.check(team, password="not-the-password")
    assert str(database.value).startswith(f"postgres: 127.0.0.1:{team.pg_port}: ")
    assert 'password authentication failed for user "nnlab"' in str(database.value)
    with pytest.raises(ServiceError) as store:
        objectstore.check(team, secret_key="not-the-secret")
    assert str(store.value).startswith(f"s3: {team.s3_endpoint}: SignatureDoesNotMatch")
    for error in (database.value, store.value):
        assert "\n" not in str(error) and "not-the-" not in str(error)

    # a tracking server given a wrong database password does not start: `up` says why in one line
    wrong = Settings.load(team.dir)
    wrong.pg_password = "not-the-password"
    wrong.dir = tmp_path  # its own logs and PID file
    with pytest.raises(ServiceError) as server:
        tracking_server.launch(
            wrong, free_port(), team.artifacts_destination, "mlflow-wrong", PidFile(tmp_path, "wrong", "mlflow")
        )
    message = str(server.value)
    assert message.startswith(f"mlflow: backend store postgresql+psycopg2://nnlab@127.0.0.1:{team.pg_port}/mlflow: ")
    assert 'password authentication failed for user "nnlab"' in message
    assert "\n" not in message and "not-the-password" not in message


def test_a_data_directory_made_with_another_password_is_named(tmp_path):
    """The env file replaced while the database stays: `up` says which folder and what to do."""
    settings = Settings.with_free_ports(tmp_path / ".services")
    settings.write()
    try:
        postgres.start(settings)
        postgres.stop(settings)
        settings.pg_password = "another-password"
        with pytest.raises(ServiceError) as error:
            postgres.start(settings)
        data = postgres.data_dir(settings)
        assert str(error.value) == (
            f"postgres: {data} was initialised with another password than {settings.env_file}'s "
            f"(was the env file replaced?): restore it, or remove {data} to start afresh"
        )
        assert postgres.pid_file(settings).pid() is None
    finally:
        postgres.stop(settings)
        shutil.rmtree((settings.dir / "postgres").resolve(), ignore_errors=True)


@pytest.fixture(scope="module")
def second_server(team, tmp_path_factory):
    """Another tracking server on the same database whose artifact bucket does not exist yet."""
    folder = tmp_path_factory.mktemp("second")
    settings = Settings.load(team.dir)
    settings.dir, settings.mlflow_port, settings.mlflow_bucket = folder, free_port(), "nnlab-tiny"
    pids = PidFile(folder, "mlflow-second", f"--port {settings.mlflow_port}")
    tracking_server.launch(settings, settings.mlflow_port, settings.artifacts_destination, "mlflow", pids)
    try:
        yield settings
    finally:
        pids.stop()


def test_an_unknown_bucket_then_a_full_one_fail_the_run_in_one_line(team, workspace, second_server):
    log = second_server.logs / "mlflow.log"
    unknown = train(
        workspace, second_server, "experiment=blobs_linear", "name=bad_bucket", "trainer.max_epochs=1", **FAST_FAILURE
    )
    assert one_error_line(unknown) == (
        f"nnlab.train: error: tracking store {second_server.tracking_uri} failed during the run: the server could "
        "not store artifact config.yaml in its artifact store (too many 500 error responses; its log says why)"
    )
    assert "NoSuchBucket" in log.read_text()
    (run,) = runs_named(team.tracking_uri, "bad_bucket")
    assert run.info.status == "FAILED" and "config.yaml" in run.data.tags["error"]

    # a full disk: the bucket exists but is over its quota, so SeaweedFS turns it read-only
    objectstore.ensure_buckets(team, "nnlab-tiny")
    objectstore.client(team).put_object(Bucket="nnlab-tiny", Key="filler", Body=os.urandom(2 * 1024 * 1024))
    assert "changing bucket nnlab-tiny to read only" in objectstore.set_quota(team, "nnlab-tiny", 1, wait_full=30)
    offset = log.stat().st_size
    full = train(
        workspace, second_server, "experiment=blobs_linear", "name=full_bucket", "trainer.max_epochs=1", **FAST_FAILURE
    )
    assert "could not store artifact config.yaml in its artifact store" in one_error_line(full)
    assert "PutObject" in log.read_text()[offset:]
    (run,) = runs_named(team.tracking_uri, "full_bucket")
    assert run.info.status == "FAILED"


def test_a_stopped_service_is_one_line_and_up_restarts_only_it(team, workspace):
    # (a stopped tracking server is refused in one line before any run exists: test_resilience)
    # a stopped object store under a running tracking server: the run fails in one line, FAILED
    before = service_pids(team)
    objectstore.client(team).put_object(Bucket=team.dvc_bucket, Key="kept/across-restart", Body=b"still here")
    assert objectstore.stop(team)
    status = team_cli("status", team.dir)
    assert status.returncode == 3 and "s3: stopped" in status.stdout.splitlines()
    failed = train(workspace, team, "experiment=blobs_linear", "name=no_store", "trainer.max_epochs=1", **FAST_FAILURE)
    one_error_line(failed)
    (run,) = runs_named(team.tracking_uri, "no_store")
    assert run.info.status == "FAILED"

    again = team_cli("up", team.dir)
    assert again.returncode == 0, again.stderr
    after = service_pids(team)
    assert after["postgres"] == before["postgres"] and after["mlflow"] == before["mlflow"]
    assert after["s3"] not in (None, before["s3"])
    assert team_cli("status", team.dir).returncode == 0
    # what was stored before the stop is still there
    kept = objectstore.client(team).get_object(Bucket=team.dvc_bucket, Key="kept/across-restart")["Body"].read()
    assert kept == b"still here"
    # nothing of this module is left RUNNING
    client = MlflowClient(tracking_uri=team.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'") == []


def test_a_port_taken_by_another_program_is_named(tmp_path):
    import socket

    settings = Settings.with_free_ports(tmp_path / ".services")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", settings.pg_port))
        sock.listen()
        settings.write()
        proc = team_cli("up", settings.dir)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"nnlab.team: error: postgres: port {settings.pg_port} (postgres) is in use by another program; "
        f"stop it or change it in {settings.env_file}"
    ]
    assert not (settings.pids / "postgres.pid").exists()
