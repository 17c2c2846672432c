"""Stage reference_report: every reference experiment over its seeds, beside its published figure.

Reads reference/metrics/<experiment>-s<seed>/{train,test}.json and reference/plots/.../history.csv;
writes reports/reference.md, reports/reference.csv and reports/reference_losses.png.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from nnlab.config.params import stage_setup
from nnlab.report import plots
from nnlab.report.references import PUBLISHED_LOSSES, REFERENCES, published_accuracy
from nnlab.report.tables import console, read_history, read_json, read_training, results_needed, write_rows

PROG = "nnlab.reference_report"

COLUMNS = (
    "experiment",
    "reference",
    "published_acc",
    "mean_test_acc",
    "std_test_acc",
    "difference",
    "seeds",
    "epochs",
    "mean_train_seconds",
)


def _runs(root: Path, experiment: str, seeds: list[int]) -> list[dict]:
    runs = []
    for seed in seeds:
        folder = root / "reference" / "metrics" / f"{experiment}-s{seed}"
        runs.append(
            {
                **read_training(folder),
                **read_json(folder / "test.json"),
                "history": read_history(root / "reference" / "plots" / f"{experiment}-s{seed}" / "history.csv"),
            }
        )
    return runs


def row_for(experiment: str, runs: list[dict]) -> dict:
    accs = [r["test_acc"] for r in runs]
    published = published_accuracy(runs[0].get("reference"))
    mean = statistics.mean(accs)
    return {
        "experiment": experiment,
        "reference": runs[0].get("reference") or "",
        "published_acc": published,
        "mean_test_acc": round(mean, 5),
        "std_test_acc": round(statistics.stdev(accs), 5) if len(accs) > 1 else 0.0,
        "difference": None if published is None else round(mean - published, 5),
        "seeds": len(runs),
        "epochs": runs[0]["epochs"],
        "mean_train_seconds": round(statistics.mean(r["train_seconds"] for r in runs), 1),
    }


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2%}"


def markdown(rows: list[dict], runs_by_experiment: dict[str, list[dict]], summaries: dict[str, str]) -> str:
    lines = [
        "# Reference experiments",
        "",
        "Each experiment of the texts, run with its published recipe, and the better recipes "
        "(`*_best`), over several seeds. Test accuracy is on MNIST's official test set "
        "(E5: the blobs' validation split). Mean ± standard deviation over the seeds.",
        "",
        "| experiment | reference | published | nnlab (mean ± std) | difference | seeds | epochs | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = "–" if r["difference"] is None else f"{r['difference'] * 100:+.2f} pp"
        lines.append(
            f"| {r['experiment']} | {r['reference']} | {_pct(r['published_acc'])} | "
            f"{r['mean_test_acc']:.2%} ± {r['std_test_acc'] * 100:.2f} pp | {diff} | {r['seeds']} | "
            f"{r['epochs']} | {r['mean_train_seconds']} |"
        )
    lines += ["", "## Published recipe against a better one", ""]
    by_name = {r["experiment"]: r for r in rows}
    for ref, best in (("ref_e2_mlp_adam", "mnist_mlp_best"), ("ref_e3_cnn", "mnist_cnn_best")):
        if ref in by_name and best in by_name:
            a, b = by_name[ref], by_name[best]
            lines.append(
                f"- **{a['reference']}**: published {_pct(a['published_acc'])}; the published recipe here "
                f"{a['mean_test_acc']:.2%} in {a['epochs']} epochs; `{best}` {b['mean_test_acc']:.2%} "
                f"± {b['std_test_acc'] * 100:.2f} pp in {b['epochs']} epochs."
            )
    lines += [
        "",
        "## Training loss against the published values",
        "",
        "![losses](reference_losses.png)",
        "",
        "## The experiments",
        "",
    ]
    lines += [f"- **{ref}**: {text}" for ref, (text, _) in REFERENCES.items()]
    lines += ["", "## Model summaries", ""]
    for exp, text in summaries.items():
        lines += [f"### {exp}", "", "```", text.rstrip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    root, params, out = stage_setup(__doc__, "reference", argv=argv)
    with results_needed(PROG, root, "run every reference experiment first (make reference)"):
        runs_by_experiment = {exp: _runs(root, exp, params["seeds"]) for exp in params["experiments"]}
        summaries = {
            exp: (root / "reference" / "models" / f"{exp}-s{params['seeds'][0]}" / "model_summary.txt").read_text()
            for exp in params["experiments"]
        }
    rows = [row_for(exp, runs) for exp, runs in runs_by_experiment.items()]
    write_rows(out / "reference.csv", rows, COLUMNS)
    plots.reference_losses(runs_by_experiment, PUBLISHED_LOSSES, out / "reference_losses.png")
    (out / "reference.md").write_text(markdown(rows, runs_by_experiment, summaries))
    console.print(f"reference report of {len(rows)} experiments -> {out / 'reference.md'}")


if __name__ == "__main__":
    main()
