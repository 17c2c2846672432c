"""The real `dvc repro` in a temporary git repository, on synthetic MNIST and a tiny configuration."""

import json
import shutil
import subprocess
import time

import pytest
import yaml

from helpers import REPO, venv_env, write_idx_dir

EXPERIMENTS = ("mnist_linear", "mnist_mlp", "mnist_cnn", "blobs_linear")
PLOTS = ("history.csv", "curves.png", "confusion.png", "predictions.png")


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
    for name in ("dvc.yaml", "conf", "src"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, repo / name)
    md5s = write_idx_dir(root / "raw")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(params["experiments"]) == set(EXPERIMENTS)
    params["mnist"].update(source="dir", dir=str(root / "raw"), md5=md5s, val_size=100)
    params["train_overrides"] = "trainer.max_epochs=2 trainer.enable_progress_bar=false"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _run(repo, "git", "init", "-q")
    _run(repo, "dvc", "init", "-q")
    _run(repo, "dvc", "config", "core.analytics", "false")
    first = _run(repo, "dvc", "repro")
    return repo, first


def test_repro_runs_every_stage_and_writes_every_output(repo):
    repo, first = repo
    for stage in (
        "prepare_mnist",
        "prepare_blobs",
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


def test_metrics_and_plots_commands_work(repo):
    repo, _ = repo
    metrics = json.loads(_run(repo, "dvc", "metrics", "show", "--json").stdout)
    found = {path for entry in metrics.values() for path in entry["data"]}
    assert {f"metrics/{n}/test.json" for n in EXPERIMENTS} <= found
    _run(repo, "dvc", "plots", "show", "-o", "dvc_plots")
    assert (repo / "dvc_plots" / "index.html").is_file()


def test_editing_a_model_config_reruns_only_its_experiments(repo):
    repo, _ = repo
    path = repo / "conf" / "model" / "cnn.yaml"
    path.write_text(path.read_text().replace("hidden_size: 128", "hidden_size: 64"))
    status = _run(repo, "dvc", "status", "--json").stdout
    changed = set(json.loads(status))
    assert changed == {"train@mnist_cnn"}


def test_dvc_exp_run_lands_in_the_same_store_with_its_name(repo):
    import sqlite3

    repo, _ = repo
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "pipeline")
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
    """DVC removes a stage's outputs before running it: the README's remedy must restore them."""
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
    """`dvc exp show --json`: experiment name -> {"params": {file: {...}}, "metrics": {file: {...}}}."""
    rows = {}
    for commit in json.loads(_run(repo, "dvc", "exp", "show", "--json").stdout):
        for exp in [commit, *((e["revs"][0]) for e in commit.get("experiments") or [])]:
            data = exp.get("data") or {}
            name = exp.get("name") or data.get("meta", {}).get("name") or exp.get("rev")
            rows[name] = {
                kind: {path: entry.get("data", {}) for path, entry in (data.get(kind) or {}).items()}
                for kind in ("params", "metrics")
            }
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
        assert rows[name]["metrics"]["metrics/blobs_linear/test.json"]["n"] == n // 5
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

    assert set(workspace["metrics"]) == {f"metrics/{e}/{f}.json" for e in EXPERIMENTS for f in ("train", "test")}
    assert all(numbers_only(values) for values in workspace["metrics"].values()), workspace["metrics"]
    used = workspace["params"]["metrics/mnist_mlp/params.yaml"]
    assert used["optimizer"]["lr"] > 0 and used["model"]["hidden_sizes"] == [128, 64]
    assert used["paths"]["data_dir"] == "data"  # relative: the same on every machine


def test_params_diff_shows_an_edited_optimizer_file(repo):
    """conf/optimizer/adam.yaml is a code dep, not a params file: the value the run used reaches
    `dvc params diff` through the run's own metrics/<name>/params.yaml."""
    repo, _ = repo
    used = yaml.safe_load((repo / "metrics" / "blobs_linear" / "params.yaml").read_text())
    assert used["optimizer"]["_target_"] == "torch.optim.Adam" and used["optimizer"]["eps"] == 1e-08
    optimizer = repo / "conf" / "optimizer" / "adam.yaml"
    optimizer.write_text(optimizer.read_text().replace("eps: 1.0e-08", "eps: 1.0e-07"))
    try:
        _run(repo, "dvc", "repro", "-s", "train@blobs_linear")
        diff = json.loads(_run(repo, "dvc", "params", "diff", "--json").stdout)
        change = diff["metrics/blobs_linear/params.yaml"]["optimizer.eps"]
        assert (change["old"], change["new"]) == (1e-08, 1e-07)
    finally:
        _run(repo, "git", "checkout", "--", ".")
        _run(repo, "dvc", "checkout", "-q")


def test_plots_show_declares_every_plot_with_axes(repo):
    repo, _ = repo
    shown = json.loads(_run(repo, "dvc", "plots", "show", "--json").stdout)["data"]
    # the two comparison charts, each one line per experiment's history.csv
    for name in ("val_acc", "val_loss"):
        (chart,) = shown[name]
        files = {row["filename"] for row in chart["content"]["data"]["values"]}
        assert files == {f"{e}/history.csv" for e in EXPERIMENTS}, (name, files)
    # every other plot is a declared file: per-experiment curves, confusion matrices, PNGs
    expected = {f"plots/{e}/{f}" for e in EXPERIMENTS for f in (*PLOTS, "confusion.csv")} | {"reports/val_accuracy.png"}
    assert set(shown) - {"val_acc", "val_loss"} == expected
    (confusion,) = shown["plots/mnist_cnn/confusion.csv"]
    assert '"field": "predicted"' in json.dumps(confusion["content"]["spec"])
    diff = json.loads(_run(repo, "dvc", "plots", "diff", "HEAD", "--json").stdout)["data"]
    assert "val_acc" in diff
