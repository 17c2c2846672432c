"""The real `dvc repro` in a temporary git repository, on synthetic MNIST and a tiny configuration."""

import json
import shutil
import subprocess
import time

import pytest
import yaml

from helpers import REPO, venv_env, write_idx_dir

EXPERIMENTS = ("mnist_linear", "mnist_mlp", "mnist_cnn", "blobs_linear")


def _run(repo, *args, check=True) -> subprocess.CompletedProcess:
    env = venv_env()
    for var in ("NNLAB_ROOT", "MLFLOW_TRACKING_URI", "DVC_ROOT"):
        env.pop(var, None)
    result = subprocess.run(list(args), cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A fresh project: the real dvc.yaml, conf/ and sources; params.yaml pointed at synthetic data."""
    root = tmp_path_factory.mktemp("pipeline")
    repo = root / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "conf", "src", "Makefile"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, repo / name)
    md5s = write_idx_dir(root / "raw")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(params["experiments"]) == set(EXPERIMENTS)
    params["mnist"].update(source="dir", dir=str(root / "raw"), md5=md5s, val_size=100)
    params["train_overrides"] = "trainer.max_epochs=2 trainer.enable_progress_bar=false"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(repo, "git", "init", "-q")
    _run(repo, "dvc", "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the team remote, the plots page
    shutil.copytree(REPO / ".dvc" / "plots", repo / ".dvc" / "plots")
    first = _run(repo, "dvc", "repro")
    return repo, first


def test_repro_runs_every_stage_and_writes_every_output(repo):
    repo, first = repo
    for stage in (
        "prepare_mnist",
        "prepare_blobs",
        "hyperparameters",
        "compare",
        *(f"{s}@{e}" for s in ("train", "evaluate") for e in EXPERIMENTS),
    ):
        assert f"Running stage '{stage}'" in first.stdout, stage
    assert json.loads((repo / "data" / "mnist" / "manifest.json").read_text())["counts"]["val"] == 100
    assert (repo / "data" / "blobs" / "train.csv").is_file()
    for name in EXPERIMENTS:
        assert (repo / "models" / name / "best.ckpt").is_file()
        assert json.loads((repo / "metrics" / name / "train.json").read_text())["epochs"] == 2
        assert 0 <= json.loads((repo / "metrics" / name / "test.json").read_text())["test_acc"] <= 1
        for plot in ("history.csv", "curves.png", "confusion.csv", "confusion.png", "predictions.png"):
            assert (repo / "plots" / name / plot).is_file(), (name, plot)
    report = (repo / "reports" / "comparison.md").read_text()
    assert all(f"| {name} |" in report for name in EXPERIMENTS)
    assert "| E3 | 98.68% |" in report  # the published figure beside mnist_cnn
    # ... said to belong to E3's own recipe, with the like-for-like run named
    assert "**E3** published 98.68% for: CNN conv32-conv64-fc128, Adam, batch 64, 10 epochs." in report
    assert "the published recipe run here is `ref_e3_cnn`" in report
    assert "| mnist_cnn | mnist | cnn | Adam lr 0.003, one-cycle, batch 128, 2 epochs |" in report
    assert (repo / "reports" / "val_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # every run was tracked in the store at the repository root, and every model registered
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    for name in EXPERIMENTS:
        champion = client.get_model_version_by_alias(f"nnlab-{name}", "champion")
        run_id = json.loads((repo / "models" / name / "run.json").read_text())["mlflow_run_id"]
        assert champion.run_id == run_id


def test_second_repro_runs_nothing(repo):
    repo, _ = repo
    second = _run(repo, "dvc", "repro")
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in _run(repo, "dvc", "status").stdout


def test_every_record_of_a_run_holds_the_experiment_name_it_is_filed_under(repo):
    """conf/logger/mlflow.yaml resolves nnlab-<data set> itself: params.yaml, config.yaml and the
    MLflow params hold nnlab-mnist / nnlab-blobs, the experiment the run is in, not a template."""
    from mlflow.tracking import MlflowClient

    repo, _ = repo
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    for name, data in (("mnist_cnn", "mnist"), ("blobs_linear", "blobs")):
        recorded = {
            "params.yaml": yaml.safe_load((repo / "metrics" / name / "params.yaml").read_text()),
            "config.yaml": yaml.safe_load((repo / "models" / name / "config.yaml").read_text()),
        }
        for where, config in recorded.items():
            assert config["logger"]["mlflow"]["experiment_name"] == f"nnlab-{data}", (name, where)
        run = client.get_run(json.loads((repo / "models" / name / "run.json").read_text())["mlflow_run_id"])
        assert run.data.params["logger.mlflow.experiment_name"] == f"nnlab-{data}"
        assert client.get_experiment(run.info.experiment_id).name == f"nnlab-{data}"


MNIST = tuple(e for e in EXPERIMENTS if e.startswith("mnist_"))
LABELS = {"mnist_linear": "linear", "mnist_mlp": "mlp", "mnist_cnn": "cnn"}


def test_metrics_show_is_one_narrow_table_of_accuracies(repo):
    repo, _ = repo
    metrics = json.loads(_run(repo, "dvc", "metrics", "show", "--json").stdout)
    (shown,) = (entry["data"] for entry in metrics.values())
    assert set(shown) == {"reports/metrics.json"}
    values = shown["reports/metrics.json"]["data"]
    for name, label in LABELS.items():
        test = json.loads((repo / "metrics" / name / "test.json").read_text())["test_acc"]
        train = json.loads((repo / "metrics" / name / "train.json").read_text())["best_val_acc"]
        assert values["test"][label] == test and values["val"][label] == round(train, 6)
    table = _run(repo, "dvc", "metrics", "show").stdout.splitlines()
    assert table[0].split() == ["Path", "test.cnn", "test.linear", "test.mlp", "val.cnn", "val.linear", "val.mlp"]
    assert max(map(len, table)) <= 100, table


def _exp_show(repo, *args) -> list[str]:
    """`dvc exp show` as a terminal user gets it: no flags; not a tty, so DVC renders the table at
    its natural width (what its pager shows, chopped at the terminal's edge), COLUMNS 160."""
    env = venv_env(COLUMNS="160")
    for var in ("NNLAB_ROOT", "MLFLOW_TRACKING_URI", "DVC_ROOT"):
        env.pop(var, None)
    result = subprocess.run(["dvc", "exp", "show", *args], cwd=repo, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_exp_show_fits_160_columns_experiments_accuracies_and_hyperparameters_first(repo):
    """The first 160 columns: experiment, created, test and best validation accuracy per MNIST
    model, then the hyperparameters people tune; nothing cut to "…"; no per-class accuracies,
    timings or resolved configs (those stay in metrics/<name>/, out of the table)."""
    repo, _ = repo
    _run(repo, "git", "add", "-A")  # DVC shows experiments of commits: the baseline is one
    _run(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "--allow-empty", "-qm", "pipeline")
    lines = _exp_show(repo)
    header = next(line for line in lines if "Experiment" in line)
    screen = header[:160].split()
    metrics = [f"{kind}.{label}" for kind in ("test", "val") for label in LABELS.values()]
    tuned = [f"lr.{label}" for label in LABELS.values()]
    assert screen[: 2 + len(metrics) + len(tuned)] == ["Experiment", "Created", *metrics, *tuned], screen
    assert all("…" not in line for line in lines), "a cell was cut"
    row = next(line for line in lines if line.strip().startswith("workspace"))
    cells = row[:160].split()
    test = json.loads((repo / "metrics" / "mnist_cnn" / "test.json").read_text())["test_acc"]
    assert float(cells[2 + metrics.index("test.cnn")]) == pytest.approx(test, abs=5e-5)
    assert float(cells[2 + len(metrics) + tuned.index("lr.cnn")]) == 0.003
    columns = _run(repo, "dvc", "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    assert not [c for c in columns if "per_class" in c or "seconds" in c or c.startswith("optimizer.")], columns
    assert {"epochs.cnn", "batch.cnn", "experiments.mnist_cnn.model", "mnist.val_size"} <= set(columns)
    # DVC 3.67 makes every dependency a column (docs/pipeline.md): the whole table never fits 160
    assert {"src/nnlab/training", "data/mnist"} <= set(columns), columns
    narrow = _exp_show(repo, "--no-pager", "--drop", ".*", "--keep", r"Experiment|Created|^(test|val|lr)\.")
    assert max(map(len, narrow)) <= 160 and all("…" not in line for line in narrow), narrow
    assert next(line for line in narrow if "Experiment" in line).split() == ["Experiment", "Created", *metrics, *tuned]


def test_plots_page_renders_offline_in_headless_chromium(repo, tmp_path):
    """The project's page (.dvc/plots/page.html) carries Vega: with every network request sent
    to a closed port, each chart still draws (a canvas with a size) and no script is remote."""
    import re

    from nnlab.screenshots import CHROMIUM_FLAGS

    repo, _ = repo
    _run(repo, "dvc", "plots", "show", "-o", "dvc_plots")
    page = (repo / "dvc_plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", page)
    dom = subprocess.run(
        [
            "chromium",
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--proxy-server=http://127.0.0.1:9",
            "--virtual-time-budget=20000",
            "--dump-dom",
            (repo / "dvc_plots" / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    charts = ["val_acc", "val_loss", *(f"plots_{e}_confusion_csv" for e in EXPERIMENTS)]
    for chart in charts:
        start = dom.index(f'id="{chart}"')
        canvas = re.search(r'<canvas width="(\d+)" height="(\d+)"', dom[start:])
        assert canvas and int(canvas[1]) > 100 and int(canvas[2]) > 100, chart
    assert dom.count("<canvas") == len(charts)


def test_editing_a_model_config_reruns_only_its_experiments(repo):
    repo, _ = repo
    path = repo / "conf" / "model" / "cnn.yaml"
    original = path.read_text()
    path.write_text(original.replace("hidden_size: 128", "hidden_size: 64"))
    try:
        changed = set(json.loads(_run(repo, "dvc", "status", "--json").stdout))
        assert changed == {"train@mnist_cnn"}
    finally:
        path.write_text(original)


def test_dvc_exp_run_lands_in_the_same_store_with_its_name(repo):
    import sqlite3

    repo, _ = repo
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "--allow-empty", "-qm", "pipeline")
    _run(
        repo,
        "dvc",
        "exp",
        "run",
        "train@blobs_linear",
        "-n",
        "quick-exp",
        "-S",
        "train_overrides='trainer.max_epochs=1 trainer.enable_progress_bar=false'",
    )  # -S parses like Hydra
    with sqlite3.connect(repo / "mlflow.db") as db:
        tags = dict(
            db.execute(
                "SELECT key, value FROM tags WHERE run_uuid = (SELECT run_uuid FROM tags "
                "WHERE key = 'dvc_exp' AND value = 'quick-exp')"
            ).fetchall()
        )
    assert tags["dvc_stage"] == "train@blobs_linear" and tags["experiment"] == "blobs_linear"


def test_a_bad_prepare_parameter_is_one_line_and_dvc_checkout_brings_the_data_back(repo):
    """DVC removes a stage's outputs before running it: the remedy in docs/configuration.md must restore them."""
    repo, _ = repo
    params_file = repo / "params.yaml"
    original, before = params_file.read_text(), (repo / "data" / "blobs" / "train.csv").read_bytes()
    params = yaml.safe_load(original)
    params["blobs"]["test_size"] = 1.5
    params_file.write_text(yaml.safe_dump(params))
    failed = _run(repo, "dvc", "repro", "prepare_blobs", check=False)
    assert failed.returncode != 0
    assert (
        "nnlab.prepare_blobs: error: params.yaml blobs.test_size: must be a number in (0, 1), got 1.5"
        in failed.stderr.splitlines()
    )
    params_file.write_text(original)
    _run(repo, "dvc", "checkout", "data/blobs")
    assert (repo / "data" / "blobs" / "train.csv").read_bytes() == before
    assert "prepare_blobs" not in _run(repo, "dvc", "status", "prepare_blobs").stdout


def _exp_rows(repo) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> {"params": {file: {...}}, "metrics": {file: {...}}, "rev": sha}."""
    rows = {}
    for commit in json.loads(_run(repo, "dvc", "exp", "show", "--json").stdout):
        for exp in [commit, *((e["revs"][0]) for e in commit.get("experiments") or [])]:
            data = exp.get("data") or {}
            name = exp.get("name") or data.get("meta", {}).get("name") or exp.get("rev")
            rows[name] = {
                kind: {path: entry.get("data", {}) for path, entry in (data.get(kind) or {}).items()}
                for kind in ("params", "metrics")
            } | {"rev": exp.get("rev")}
    return rows


@pytest.mark.slow  # about 3 minutes: three experiments, each in its own copy of the repository
def test_dvc_exp_run_temp_and_queue_run_in_their_own_copy(repo):
    """`--temp` and `--queue` run in a copy under .dvc/tmp/exps/ (DVC_ROOT names this repository):
    each reads its own -S values and writes its own outputs; runs land in this repository's store."""
    import sqlite3

    repo, _ = repo
    _run(repo, "dvc", "repro")  # up to date first: each experiment then re-runs only the blobs stages
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "before experiments")
    _run(repo, "dvc", "exp", "run", "--temp", "-n", "temp-600", "-S", "blobs.n_samples=600")
    _run(repo, "dvc", "exp", "run", "--queue", "-n", "queued-400", "-S", "blobs.n_samples=400")
    _run(repo, "dvc", "exp", "run", "--queue", "-n", "queued-750", "-S", "blobs.n_samples=750")
    _run(repo, "dvc", "queue", "start", "-j", "2")
    deadline = time.time() + 600
    while "Queued" in (status := _run(repo, "dvc", "queue", "status").stdout) or "Running" in status:
        assert time.time() < deadline, status
        time.sleep(3)
    assert status.count("Success") == 2, status
    rows = _exp_rows(repo)
    for name, n in (("temp-600", 600), ("queued-400", 400), ("queued-750", 750)):
        assert rows[name]["params"]["params.yaml"]["blobs"]["n_samples"] == n
        # 20 % of the samples are the test split: each experiment evaluated its own data
        test = _run(repo, "git", "show", f"{rows[name]['rev']}:metrics/blobs_linear/test.json").stdout
        assert json.loads(test)["n"] == n // 5
    assert (repo / "data" / "blobs" / "train.csv").read_text().count("\n") == 401  # workspace untouched
    with sqlite3.connect(repo / "mlflow.db") as db:
        tagged = {v for (v,) in db.execute("SELECT value FROM tags WHERE key = 'dvc_exp'")}
    assert {"temp-600", "queued-400", "queued-750"} <= tagged
    # the best of them into the workspace, as a user would
    _run(repo, "dvc", "exp", "apply", "queued-750")
    assert yaml.safe_load((repo / "params.yaml").read_text())["blobs"]["n_samples"] == 750
    assert json.loads((repo / "metrics" / "blobs_linear" / "test.json").read_text())["n"] == 150
    _run(repo, "git", "checkout", "--", ".")
    _run(repo, "dvc", "checkout", "-q")


def test_exp_show_is_numeric_and_shows_the_hyperparameters_used(repo):
    repo, _ = repo
    workspace = _exp_rows(repo)["workspace"]

    def numbers_only(value) -> bool:
        if isinstance(value, dict):
            return all(numbers_only(v) for v in value.values())
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    assert set(workspace["metrics"]) == {"reports/metrics.json"}
    assert all(numbers_only(values) for values in workspace["metrics"].values()), workspace["metrics"]
    tuned = workspace["params"]["reports/hyperparameters.yaml"]
    assert tuned == {
        "lr": {"linear": 0.003, "mlp": 0.003, "cnn": 0.003},
        "epochs": {"linear": 2, "mlp": 2, "cnn": 2},  # train_overrides of the fixture
        "batch": {"linear": 128, "mlp": 128, "cnn": 128},
    }
    assert set(workspace["params"]) == {"reports/hyperparameters.yaml", "params.yaml"}
    used = yaml.safe_load((repo / "metrics" / "mnist_mlp" / "params.yaml").read_text())
    assert used["model"]["hidden_sizes"] == [128, 64] and used["paths"]["data_dir"] == "data"  # relative


def test_an_edited_hyperparameter_shows_in_params_diff_and_exp_show(repo):
    """Editing conf/ re-runs the experiment; `dvc params diff` and `dvc exp show` show the value."""
    repo, _ = repo
    _run(repo, "git", "checkout", "--", "params.yaml")  # an earlier test's `dvc exp run` set train_overrides
    experiment = repo / "conf" / "experiment" / "mnist_linear.yaml"
    experiment.write_text(experiment.read_text().replace("lr: 0.003", "lr: 0.01"))
    try:
        assert "train@mnist_linear" in json.loads(_run(repo, "dvc", "status", "--json").stdout)
        _run(repo, "dvc", "repro", "-s", "train@mnist_linear")
        _run(repo, "dvc", "repro", "-s", "hyperparameters")
        diff = json.loads(_run(repo, "dvc", "params", "diff", "--json").stdout)
        ((key, change),) = diff["reports/hyperparameters.yaml"].items()
        assert (key, change["old"], change["new"]) == ("lr.linear", 0.003, 0.01)
        assert _exp_rows(repo)["workspace"]["params"]["reports/hyperparameters.yaml"]["lr"]["linear"] == 0.01
        row = next(line for line in _exp_show(repo) if line.strip().startswith("workspace"))
        assert "0.01 " in row[:160]
    finally:
        _run(repo, "git", "checkout", "--", ".")
        _run(repo, "dvc", "checkout", "-q")


def test_params_diff_of_a_resolved_config_shows_an_edited_optimizer_file(repo):
    """conf/optimizer/adam.yaml is a code dep, not a params file: every value a run used is in its
    metrics/<name>/params.yaml, which `dvc params diff --targets` compares."""
    repo, _ = repo
    used = yaml.safe_load((repo / "metrics" / "blobs_linear" / "params.yaml").read_text())
    assert used["optimizer"]["_target_"] == "torch.optim.Adam" and used["optimizer"]["eps"] == 1e-08
    optimizer = repo / "conf" / "optimizer" / "adam.yaml"
    optimizer.write_text(optimizer.read_text().replace("eps: 1.0e-08", "eps: 1.0e-07"))
    try:
        _run(repo, "dvc", "repro", "-s", "train@blobs_linear")
        target = "metrics/blobs_linear/params.yaml"
        diff = json.loads(_run(repo, "dvc", "params", "diff", "--json", "--targets", target).stdout)
        change = diff[target]["optimizer.eps"]
        assert (change["old"], change["new"]) == (1e-08, 1e-07)
    finally:
        _run(repo, "git", "checkout", "--", ".")
        _run(repo, "dvc", "checkout", "-q")


def test_plots_show_declares_every_plot_once(repo):
    repo, _ = repo
    shown = json.loads(_run(repo, "dvc", "plots", "show", "--json").stdout)["data"]
    # the two comparison charts: one line per MNIST experiment, each its own colour; no blobs
    for name in ("val_acc", "val_loss"):
        (chart,) = shown[name]
        files = {row["filename"] for row in chart["content"]["data"]["values"]}
        assert files == {f"{e}/history.csv" for e in MNIST}, (name, files)
        spec = json.dumps(chart["content"])
        assert '"color": {"field": "experiment"' in spec
    # per experiment: the confusion matrix (errors coloured) and the mistakes; no picture of a
    # chart already drawn (curves.png, confusion.png, val_accuracy.png are plain outputs)
    expected = {f"plots/{e}/{f}" for e in EXPERIMENTS for f in ("confusion.csv", "predictions.png")}
    assert set(shown) - {"val_acc", "val_loss"} == expected
    (confusion,) = shown["plots/mnist_cnn/confusion.csv"]
    spec = json.dumps(confusion["content"])
    assert '"field": "predicted"' in spec and '"filter": "!datum.correct"' in spec
    diff = json.loads(_run(repo, "dvc", "plots", "diff", "HEAD", "--json").stdout)["data"]
    assert "val_acc" in diff


def test_team_push_then_pull_in_a_clone_gets_what_was_pushed_and_names_the_rest(repo, tmp_path):
    """README's team mode against a local-folder remote, with the reference pipeline whose 24
    models were never produced nor pushed (reference/dvc.yaml does not cache them): in a fresh
    clone the bare `dvc pull -r team` exits 0 with the pipeline's data and models, `dvc status`
    names the reference models as missing, and `make pull` says in one line where they are."""
    repo, _ = repo
    shutil.copytree(REPO / "reference", repo / "reference", ignore=shutil.ignore_patterns("metrics", "plots", "models"))
    _run(repo, "dvc", "remote", "remove", "team")  # the team's S3 bucket, here a folder
    _run(repo, "dvc", "remote", "add", "team", str(tmp_path / "remote"))
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "with the reference pipeline")
    try:
        _run(repo, "dvc", "push", "-r", "team")  # as documented: everything this repository has
        clone = tmp_path / "clone"
        _run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
        pulled = _run(clone, "dvc", "pull", "-r", "team", check=False)  # as documented, untargeted
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert "ERROR" not in pulled.stdout + pulled.stderr
        assert (clone / "models" / "mnist_cnn" / "best.ckpt").read_bytes() == (
            repo / "models" / "mnist_cnn" / "best.ckpt"
        ).read_bytes()
        assert (clone / "data" / "mnist" / "manifest.json").is_file()
        assert "Data and pipelines are up to date" in _run(clone, "dvc", "status", "dvc.yaml").stdout
        assert not (clone / "reference" / "models").exists()
        missing = json.loads(_run(clone, "dvc", "status", "--json", "reference/dvc.yaml").stdout)
        outs = next(
            e["changed outs"] for e in missing["reference/dvc.yaml:reference@ref_e3_cnn-1"] if "changed outs" in e
        )
        assert outs["reference/models/ref_e3_cnn-s1"] == "deleted", outs
        made = _run(clone, "make", "--no-print-directory", "pull")
        assert made.stdout.splitlines()[-1] == (
            "reference models (reference/models/*): not on the team remote (never cached); "
            "0 in this clone; make reference trains them here"
        ), made.stdout
    finally:
        shutil.rmtree(repo / "reference")
        _run(repo, "git", "rm", "-rq", "--cached", "reference")
        shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
        _run(repo, "git", "add", "-A")
        _run(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "without it")
