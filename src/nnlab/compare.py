"""Stage compare: one table of every experiment, beside its published reference figure.

Reads metrics/<name>/{train,test,params} and plots/<name>/history.csv for every experiment in
params.yaml; writes reports/comparison.md, reports/comparison.csv, reports/val_accuracy.png and
reports/metrics.json (the pipeline's declared metrics: test and best validation accuracy of each
MNIST experiment). With --hyperparameters (stage hyperparameters) it writes only
reports/hyperparameters.yaml: the values people tune, per MNIST experiment, for `dvc exp show`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from nnlab.config.params import params_section, parser
from nnlab.config.paths import find_root
from nnlab.report import plots
from nnlab.report.references import REFERENCES, like_for_like, published_accuracy
from nnlab.report.tables import (
    console,
    read_history,
    read_json,
    read_training,
    results_needed,
    write_json,
    write_rows,
    write_yaml,
)

PROG = "nnlab.compare"

COLUMNS = (
    "experiment",
    "data",
    "model",
    "recipe",
    "parameters",
    "epochs",
    "train_seconds",
    "best_val_acc",
    "test_acc",
    "reference",
    "published_acc",
    "difference",
)

# `dvc exp show` and `dvc metrics show` hold the experiments on this data set: the subject of the
# comparison (blobs is the pipeline's two-dimensional smoke test; its figures are in comparison.md).
SUMMARY_DATA = "mnist"

# The hyperparameters `dvc exp show` shows per experiment, in this order (the most tuned first):
# name -> where it is in the resolved config.
HYPERPARAMETERS = {"lr": ("optimizer", "lr"), "epochs": ("trainer", "max_epochs"), "batch": ("data", "batch_size")}


def resolved_config(name: str, root: Path) -> dict:
    return yaml.safe_load((root / "metrics" / name / "params.yaml").read_text()) or {}


def recipe(config: dict) -> str:
    """``Adam lr 0.003, one-cycle, batch 128, 10 epochs``: what a published figure is compared with."""
    optimizer = config.get("optimizer") or {}
    schedule = (config.get("scheduler") or {}).get("_target_", "").rsplit(".", 1)[-1]
    parts = [
        f"{optimizer.get('_target_', '?').rsplit('.', 1)[-1]} lr {optimizer.get('lr')}",
        {"OneCycleLR": "one-cycle", "CosineAnnealingLR": "cosine"}.get(schedule, schedule),
        f"batch {config.get('data', {}).get('batch_size')}",
        f"{config.get('trainer', {}).get('max_epochs')} epochs",
    ]
    return ", ".join(p for p in parts if p)


def row_for(name: str, spec: dict, root: Path) -> dict:
    train = read_training(root / "metrics" / name)
    test = read_json(root / "metrics" / name / "test.json")
    published = published_accuracy(train.get("reference"))
    return {
        "experiment": name,
        "data": spec.get("data"),
        "model": spec.get("model"),
        "recipe": recipe(resolved_config(name, root)),
        "parameters": train["parameters"],
        "epochs": train["epochs"],
        "train_seconds": train["train_seconds"],
        "best_val_acc": train["best_val_acc"],
        "test_acc": test["test_acc"],
        "reference": train.get("reference") or "",
        "published_acc": published,
        "difference": None if published is None else round(test["test_acc"] - published, 4),
    }


def label(name: str, spec: dict) -> str:
    """A column label for `dvc exp show`: the experiment's name less its data set's prefix
    (mnist_cnn -> cnn), short enough for one table in a terminal."""
    prefix = f"{spec.get('data')}_"
    return name.removeprefix(prefix) or name


def summarized(experiments: dict) -> dict[str, str]:
    """{experiment: label} of the experiments `dvc exp show` and `dvc metrics show` hold."""
    return {name: label(name, spec) for name, spec in experiments.items() if spec.get("data") == SUMMARY_DATA}


def summary(rows: list[dict], experiments: dict) -> dict:
    """reports/metrics.json: test and best validation accuracy, each by experiment label."""
    labels = summarized(experiments)
    shown = [r for r in rows if r["experiment"] in labels]
    return {
        "test": {labels[r["experiment"]]: r["test_acc"] for r in shown},
        "val": {labels[r["experiment"]]: round(r["best_val_acc"], 6) for r in shown},
    }


def hyperparameters(experiments: dict, root: Path) -> dict:
    """reports/hyperparameters.yaml: {lr: {cnn: 0.003, ...}, epochs: {...}, batch: {...}}."""
    labels = summarized(experiments)
    configs = {name: resolved_config(name, root) for name in labels}
    return {
        key: {labels[name]: (config.get(group) or {}).get(field) for name, config in configs.items()}
        for key, (group, field) in HYPERPARAMETERS.items()
    }


PERCENT = ("best_val_acc", "test_acc", "published_acc")


def _cell(value, column: str) -> str:
    """By column, not by value: a training of 0.98 s is not 98 %."""
    if value is None or value == "":
        return "–"
    if column in PERCENT:
        return f"{value:.2%}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


MARKDOWN = (
    ("experiment", "experiment"),
    ("data", "data"),
    ("model", "model"),
    ("recipe", "recipe"),
    ("parameters", "parameters"),
    ("train_seconds", "train s"),
    ("best_val_acc", "best val acc"),
    ("test_acc", "test acc"),
    ("reference", "reference"),
    ("published_acc", "published (its own recipe)"),
)


def _published_note(ref: str, rows: list[dict]) -> str:
    what, figure = REFERENCES[ref]
    ours = ", ".join(f"`{r['experiment']}` ({r['recipe']})" for r in rows if r["reference"] == ref)
    same = like_for_like(ref)
    where = f"; the published recipe run here is `{same}` in reference.md (`make reference`)" if same else ""
    shown = f"{figure:.2%}" if figure is not None else "no figure"
    return f"- **{ref}** published {shown} for: {what}. Not the recipe of {ours}{where}."


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Comparison",
        "",
        "Test accuracy on held-out data (MNIST: the official 10,000 test images; blobs: the "
        "validation split). Each published figure belongs to its text's own recipe (listed below), "
        "not to the recipe these experiments train with: the like-for-like rows, each published "
        "recipe run here over several seeds, are in reference.md.",
        "",
        "| " + " | ".join(title for _, title in MARKDOWN) + " |",
        "|" + "---|" * len(MARKDOWN),
    ]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r[column], column) for column, _ in MARKDOWN) + " |")
    lines += ["", "Published figures and the recipes they belong to:", ""]
    used = sorted({r["reference"] for r in rows if r["reference"]})
    lines += [_published_note(ref, rows) for ref in used if ref in REFERENCES]
    lines += ["", "![validation accuracy per epoch (MNIST)](val_accuracy.png)", ""]
    return "\n".join(lines)


def arguments() -> argparse.ArgumentParser:
    p = parser(__doc__, "reports")
    p.add_argument(
        "--hyperparameters", action="store_true", help="write only reports/hyperparameters.yaml (for dvc exp show)"
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    root = find_root()
    experiments = params_section(args.params, "experiments")
    out = args.out or root / "reports"
    out.mkdir(parents=True, exist_ok=True)
    if args.hyperparameters:
        with results_needed(PROG, root, "train every experiment first (dvc repro)"):
            write_yaml(out / "hyperparameters.yaml", hyperparameters(experiments, root))
        return
    with results_needed(PROG, root, "train and evaluate every experiment first (dvc repro)"):
        rows = [row_for(name, spec, root) for name, spec in experiments.items()]
        histories = {name: read_history(root / "plots" / name / "history.csv") for name in summarized(experiments)}
    write_rows(out / "comparison.csv", rows, COLUMNS)
    (out / "comparison.md").write_text(markdown(rows))
    write_json(out / "metrics.json", summary(rows, experiments))
    plots.learning_curves(histories, out / "val_accuracy.png")
    console.print(f"comparison of {len(rows)} experiments -> {out / 'comparison.md'}")


if __name__ == "__main__":
    main()
