"""Stage compare: one table of every experiment, beside its published reference figure.

Reads metrics/<name>/{train,test}.json and plots/<name>/history.csv for every experiment in
params.yaml; writes reports/comparison.md, reports/comparison.csv and reports/val_accuracy.png.
"""

from __future__ import annotations

import csv
from pathlib import Path

from nnlab import plots, stage
from nnlab.history import write_rows
from nnlab.paths import find_root
from nnlab.references import REFERENCES, published_accuracy
from nnlab.reporting import console, read_json

COLUMNS = ("experiment", "data", "model", "parameters", "epochs", "train_seconds", "best_val_acc",
           "test_acc", "reference", "published_acc", "difference")


def read_history(path: Path) -> list[dict]:
    with Path(path).open() as handle:
        return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(handle)]


def row_for(name: str, spec: dict, root: Path) -> dict:
    train = read_json(root / "metrics" / name / "train.json")
    test = read_json(root / "metrics" / name / "test.json")
    published = published_accuracy(train.get("reference"))
    return {
        "experiment": name, "data": spec.get("data"), "model": spec.get("model"),
        "parameters": train["parameters"], "epochs": train["epochs"], "train_seconds": train["train_seconds"],
        "best_val_acc": train["best_val_acc"], "test_acc": test["test_acc"],
        "reference": train.get("reference") or "", "published_acc": published,
        "difference": None if published is None else round(test["test_acc"] - published, 4),
    }


def _cell(value) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.2%}" if value <= 1 else f"{value:.1f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    head = ["experiment", "data", "model", "parameters", "epochs", "train s", "best val acc", "test acc",
            "reference", "published", "difference"]
    lines = ["# Comparison", "",
             "Test accuracy on held-out data (MNIST: the official 10,000 test images; blobs: the "
             "validation split), beside the published figure of the matching reference experiment.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [_cell(r[c]) for c in COLUMNS]
        cells[-1] = "–" if r["difference"] is None else f"{r['difference'] * 100:+.2f} pp"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "References:", ""]
    used = sorted({r["reference"] for r in rows if r["reference"]})
    lines += [f"- **{ref}**: {REFERENCES[ref][0]}" for ref in used if ref in REFERENCES]
    lines += ["", "![validation accuracy per epoch](val_accuracy.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = stage.parser(__doc__, "reports").parse_args(argv)
    root = find_root()
    experiments = stage.params_section(args.params, "experiments")
    out = args.out or root / "reports"
    out.mkdir(parents=True, exist_ok=True)
    rows = [row_for(name, spec, root) for name, spec in experiments.items()]
    write_rows(out / "comparison.csv", rows, COLUMNS)
    (out / "comparison.md").write_text(markdown(rows))
    histories = {name: read_history(root / "plots" / name / "history.csv") for name in experiments}
    plots.learning_curves(histories, out / "val_accuracy.png")
    console.print(f"comparison of {len(rows)} experiments -> {out / 'comparison.md'}")


if __name__ == "__main__":
    main()
