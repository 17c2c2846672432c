"""The reference experiments: every config trains on synthetic data; the report and teaching stages."""

import csv
import json

import pytest
import yaml

from nnlab import compare, reference_report, teaching
from nnlab.models.activations import ELEMENTWISE, softmax, softmax_jacobian
from nnlab.train import train

from helpers import REPO

REFERENCE = yaml.safe_load((REPO / "params.yaml").read_text())["reference"]


@pytest.mark.parametrize("name", REFERENCE["experiments"])
def test_each_reference_config_trains_a_step(compose, project, name):
    cfg = compose(
        f"experiment={name}", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "logger=none", "paths=reference"
    )
    summary = train(cfg)
    assert summary["epochs"] == 1 and 0 <= summary["test_acc"] <= 1
    assert (project / "reference" / "models" / name / "model_summary.txt").read_text().startswith("Model:")


def test_reference_recipes_are_the_published_ones(compose):
    e3 = compose("experiment=ref_e3_cnn")
    assert (e3.data.batch_size, e3.data.mean, e3.data.std, e3.trainer.max_epochs) == (64, 0.5, 0.5, 10)
    assert e3.optimizer._target_ == "torch.optim.Adam" and e3.optimizer.lr == 0.001 and not e3.scheduler
    e5 = compose("experiment=ref_e5_blobs_linear")
    assert (e5.data.batch_size, e5.optimizer.lr, e5.trainer.max_epochs) == (400, 0.01, 1000)
    e6 = compose("experiment=ref_e6_mlp512_rmsprop")
    assert list(e6.model.hidden_sizes) == [512] and e6.optimizer._target_ == "torch.optim.RMSprop"
    e4 = compose("experiment=ref_e4_numpy_mlp")
    assert e4.model._target_.endswith("NumpyMLP") and e4.data.batch_size == 1


def test_numpy_network_is_tracked_like_the_others(compose, project, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = train(
        compose(
            "experiment=ref_e4_numpy_mlp",
            "trainer.max_epochs=2",
            "data.batch_size=8",
            "optimizer.lr=0.5",
            f"logger.mlflow.tracking_uri={uri}",
        )
    )
    assert summary["test_acc"] > 0.5  # synthetic classes, chance is 0.1
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("nnlab-mnist").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "NumpyMLP"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert "checkpoint/best.npz" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}


def _refused(main, params, capsys) -> str:
    """What a report stage says on stderr when it exits 2 (bad input)."""
    with pytest.raises(SystemExit) as exited:
        main(["--params", str(params)])
    assert exited.value.code == 2
    return capsys.readouterr().err.strip()


def test_reference_report_gives_mean_and_std_beside_the_published_figure(compose, project, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"reference": {"seeds": [1, 2], "experiments": ["ref_e5_blobs_linear"]}}))
    assert _refused(reference_report.main, params, capsys) == (  # before the runs exist
        "nnlab.reference_report: error: reference/metrics/ref_e5_blobs_linear-s1/train.json is missing: "
        "run every reference experiment first (make reference)"
    )
    assert not (project / "reports" / "reference.md").exists()
    for seed in (1, 2):
        train(
            compose(
                "experiment=ref_e5_blobs_linear",
                f"seed={seed}",
                f"name=ref_e5_blobs_linear-s{seed}",
                "trainer.max_epochs=100",
                "logger=none",
                "paths=reference",
            )
        )
    reference_report.main(["--params", str(params)])
    with (project / "reports" / "reference.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    accs = [
        json.loads((project / "reference" / "metrics" / f"ref_e5_blobs_linear-s{s}" / "test.json").read_text())[
            "test_acc"
        ]
        for s in (1, 2)
    ]
    assert float(row["mean_test_acc"]) == pytest.approx(sum(accs) / 2, abs=1e-5)
    assert float(row["published_acc"]) == 1.0 and row["seeds"] == "2" and row["epochs"] == "100"
    report = (project / "reports" / "reference.md").read_text()
    assert "| ref_e5_blobs_linear | E5 | 100.00% |" in report
    assert "### ref_e5_blobs_linear" in report and "Total params: 9" in report
    assert (project / "reports" / "reference_losses.png").read_bytes()[:4] == b"\x89PNG"


def test_teaching_page(project):
    teaching.main([])
    page = (project / "reports" / "activations.md").read_text()
    assert "| E4: 784-128-64-10 |" in page and "| deeper: 784-(64 x 6)-10 |" in page
    norms = teaching.gradient_norms(*_batch(project))
    deep = norms["deeper: 784-(64 x 6)-10"]
    assert len(deep) == 7 and deep[0] < deep[-1] / 10  # vanishing gradients in the sigmoid stack
    for png in ("activations.png", "gradient_norms.png"):
        assert (project / "reports" / png).read_bytes()[:4] == b"\x89PNG"


def _batch(project):
    import numpy as np

    from nnlab.data import mnist

    images, labels = mnist.load(project / "data" / "mnist")["train"]
    return images[:200].reshape(200, -1) / 255.0, labels[:200].astype(np.int64)


def test_activation_derivatives_match_finite_differences():
    import numpy as np

    z = np.linspace(-4, 4, 81) + 0.013  # away from ReLU's kink at 0
    for name, (f, df) in ELEMENTWISE.items():
        numeric = (f(z + 1e-6) - f(z - 1e-6)) / 2e-6
        assert np.allclose(df(z), numeric, atol=1e-6), name
    scores = np.array([0.3, -1.2, 2.0])
    numeric = np.stack(
        [(softmax((scores + 1e-6 * e)[None])[0] - softmax((scores - 1e-6 * e)[None])[0]) / 2e-6 for e in np.eye(3)],
        axis=1,
    )
    assert np.allclose(softmax_jacobian(scores), numeric, atol=1e-6)


@pytest.mark.slow
def test_e5_full_recipe_reaches_full_validation_accuracy(compose, project):
    summary = train(compose("experiment=ref_e5_blobs_linear", "logger=none"))
    assert summary["epochs"] == 1000 and summary["best_val_acc"] == 1.0


def test_the_comparison_shows_seconds_as_seconds_and_accuracies_as_percentages():
    row = {
        **dict.fromkeys(compare.COLUMNS),
        "experiment": "blobs_linear",
        "parameters": 9,
        "epochs": 30,
        "train_seconds": 0.977,  # under a second: once printed as "97.70%"
        "best_val_acc": 0.9,
        "test_acc": 1.0,
        "reference": "E5",
        "published_acc": 1.0,
        "difference": 0.0,
    }
    line = next(x for x in compare.markdown([row]).splitlines() if x.startswith("| blobs_linear"))
    # no recipe given: "–"; the published figure without a difference (it belongs to another recipe)
    assert line == "| blobs_linear | – | – | – | 9 | 1.0 | 90.00% | 100.00% | E5 | 100.00% |"
    slow = compare.markdown([{**row, "train_seconds": 42.84}])
    assert "| 9 | 42.8 | 90.00% |" in slow


def test_compare_before_the_experiments_ran_is_one_line(compose, project, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"experiments": {"blobs_linear": {"data": "blobs", "model": "linear"}}}))
    train(compose("experiment=blobs_linear", "trainer.max_epochs=1", "test_after_fit=false", "logger=none"))
    capsys.readouterr()  # the training's own output
    assert _refused(compare.main, params, capsys) == (  # trained, not evaluated
        "nnlab.compare: error: metrics/blobs_linear/test.json is missing: "
        "train and evaluate every experiment first (dvc repro)"
    )
    assert not (project / "reports" / "comparison.md").exists()
