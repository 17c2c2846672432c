"""The report of an Optuna study: ``reports/search/<study>.md`` and Optuna's own plots
(optimisation history, parameter importances, parallel coordinates) as PNG beside it."""

from __future__ import annotations

import warnings
from pathlib import Path

from nnlab.report import plots
from nnlab.tracking.credentials import redacted

MAX_ROWS = 50


def _plots(study, metric: str, folder: Path) -> tuple[list[Path], list[str]]:
    """(the PNGs drawn, why others were not)."""
    import matplotlib
    import optuna
    from optuna.visualization import matplotlib as vis

    drawn, skipped = [], []
    charts = {
        "history": lambda: vis.plot_optimization_history(study, target_name=metric),
        "importances": lambda: vis.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target_name=metric
        ),
        "parallel_coordinates": lambda: vis.plot_parallel_coordinate(study, target_name=metric),
    }
    for name, draw in charts.items():
        try:
            # Optuna's plots switch matplotlib's style; rc_context puts the project's back.
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")
                ax = draw()
            drawn.append(plots.save(ax.figure, folder / f"{name}.png"))
        except Exception as exc:  # too few finished trials, or nothing varies: say so, draw the rest
            skipped.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return drawn, skipped


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value).replace("|", "\\|")


def write_search_report(study, summary: dict, folder: Path) -> list[Path]:
    """Writes the report and its plots; returns their paths, the Markdown file first."""
    import optuna

    folder = Path(folder)
    name, metric = summary["study"], summary["metric"]
    trials = study.get_trials(deepcopy=False)
    drawn, skipped = _plots(study, metric, folder / name)
    c = summary["counts"]
    lines = [
        f"# Optuna study `{name}`",
        "",
        "| | |",
        "| --- | --- |",
        f"| storage | `{redacted(summary['storage'])}` |",
        f"| objective | {metric}, {summary['direction']} (the best epoch's value of each trial) |",
        f"| sampler, pruner | {summary['sampler']}, {summary['pruner']} |",
        f"| trials | {summary['trials']}: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed |",
        f"| MLflow parent runs | {', '.join(f'`{p}`' for p in summary['parents']) or '(not tracked)'} |",
        "",
        "## Best trial",
        "",
    ]
    best = summary["best"]
    if best:
        lines += [
            f"Trial {best['number']}: **{metric} = {best['value']:.6g}**, MLflow run "
            f"`{best['mlflow_run_id'] or '-'}`, folder `{best['run_dir'] or '-'}`.",
            "",
            "| parameter | value |",
            "| --- | --- |",
            *(f"| `{k}` | {_cell(v)} |" for k, v in best["params"].items()),
        ]
    else:
        lines.append("No trial has completed yet.")
    params = sorted({k for t in trials for k in t.params})
    sign = -1 if summary["direction"] == "maximize" else 1
    order = {optuna.trial.TrialState.COMPLETE: 0, optuna.trial.TrialState.PRUNED: 1}
    ranked = sorted(
        trials,
        key=lambda t: (order.get(t.state, 2), sign * t.value if t.value is not None else 0, t.number),
    )
    lines += [
        "",
        f"## Trials ({'best first' if len(ranked) <= MAX_ROWS else f'the best {MAX_ROWS} of {len(ranked)}'})",
        "",
        "| trial | state | "
        + " | ".join([metric, "epochs", *(f"`{p}`" for p in params), "seconds", "MLflow run"])
        + " |",
        "| " + " | ".join(["---"] * (len(params) + 6)) + " |",
    ]
    for t in ranked[:MAX_ROWS]:
        seconds = round(t.duration.total_seconds(), 1) if t.duration else None
        cells = [
            t.number,
            t.state.name.lower(),
            t.value,
            t.last_step,
            *(t.params.get(p) for p in params),
            seconds,
            t.user_attrs.get("mlflow_run_id"),
        ]
        lines.append("| " + " | ".join(_cell(v) for v in cells) + " |")
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({name}/{p.name})" for p in drawn]
    lines += [f"- not drawn: {why}" for why in skipped]
    report = folder / f"{name}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    return [report, *drawn]
