"""Stage compare: one table of every experiment, beside its published reference figure.

Reads metrics/<name>/{train,test}.json, params.yaml and plots/<name>/history.csv for every experiment in
params.yaml; writes reports/comparison.md, reports/comparison.csv and reports/val_accuracy.png.
"""

from __future__ import annotations

from pathlib import Path

from nnlab.config.params import stage_setup
from nnlab.report import plots
from nnlab.report.references import REFERENCES, published_accuracy
from nnlab.report.tables import console, read_history, read_json, read_training, results_needed, write_rows

PROG = "nnlab.compare"

COLUMNS = (
    "experiment",
    "data",
    "model",
    "parameters",
    "epochs",
    "train_seconds",
    "best_val_acc",
    "test_acc",
    "reference",
    "published_acc",
    "difference",
)


def row_for(name: str, spec: dict, root: Path) -> dict:
    train = read_training(root / "metrics" / name)
    test = read_json(root / "metrics" / name / "test.json")
    published = published_accuracy(train.get("reference"))
    return {
        "experiment": name,
        "data": spec.get("data"),
        "model": spec.get("model"),
        "parameters": train["parameters"],
        "epochs": train["epochs"],
        "train_seconds": train["train_seconds"],
        "best_val_acc": train["best_val_acc"],
        "test_acc": test["test_acc"],
        "reference": train.get("reference") or "",
        "published_acc": published,
        "difference": None if published is None else round(test["test_acc"] - published, 4),
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


def markdown(rows: list[dict]) -> str:
    head = [
        "experiment",
        "data",
        "model",
        "parameters",
        "epochs",
        "train s",
        "best val acc",
        "test acc",
        "reference",
        "published",
        "difference",
    ]
    lines = [
        "# Comparison",
        "",
        "Test accuracy on held-out data (MNIST: the official 10,000 test images; blobs: the "
        "validation split), beside the published figure of the matching reference experiment.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [_cell(r[c], c) for c in COLUMNS]
        cells[-1] = "–" if r["difference"] is None else f"{r['difference'] * 100:+.2f} pp"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "References:", ""]
    used = sorted({r["reference"] for r in rows if r["reference"]})
    lines += [f"- **{ref}**: {REFERENCES[ref][0]}" for ref in used if ref in REFERENCES]
    lines += ["", "![validation accuracy per epoch](val_accuracy.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    root, experiments, out = stage_setup(__doc__, "experiments", argv=argv)
    with results_needed(PROG, root, "train and evaluate every experiment first (dvc repro)"):
        rows = [row_for(name, spec, root) for name, spec in experiments.items()]
        histories = {name: read_history(root / "plots" / name / "history.csv") for name in experiments}
    write_rows(out / "comparison.csv", rows, COLUMNS)
    (out / "comparison.md").write_text(markdown(rows))
    plots.learning_curves(histories, out / "val_accuracy.png")
    console.print(f"comparison of {len(rows)} experiments -> {out / 'comparison.md'}")


if __name__ == "__main__":
    main()
