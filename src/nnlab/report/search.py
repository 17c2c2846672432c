"""The report of an Optuna study: ``reports/search/<study>.md`` and Optuna's own plots
(optimisation history, parameter importances, parallel coordinates) as PNG in
``reports/search/<study>/``: the report links them by that relative path, which the parent run's
artifacts (``search/<study>.md``, ``search/<study>/*.png``) keep too, with ``search/<study>/report.html``:
the same report as one page with its plots inline, which MLflow's artifact viewer shows.

A report may be committed, so it holds nothing of the machine that made it: no absolute path, no
run id (the parent run's tags name the best trial's run; the terminal summary prints it)."""

from __future__ import annotations

import base64
import html
import re
import warnings
from pathlib import Path

from nnlab.report import plots
from nnlab.tracking.credentials import redacted

# Optuna's default (Blues) draws the worst trials near white; viridis without its palest yellow
# keeps every line visible on white.
PARALLEL_CMAP = ("viridis", 0.88)

MAX_ROWS = 50


def _plots(study, metric: str, folder: Path) -> tuple[list[Path], list[str]]:
    """(the PNGs drawn, why others were not)."""
    import matplotlib
    import optuna
    from optuna.visualization import matplotlib as vis

    drawn, skipped = [], []
    charts = {
        "history": lambda: _whole_trials(vis.plot_optimization_history(study, target_name=metric)),
        "importances": lambda: vis.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target_name=metric
        ),
        "parallel_coordinates": lambda: _readable(vis.plot_parallel_coordinate(study, target_name=metric)),
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


def _whole_trials(ax):
    """Trial numbers on the x axis, never 2.5."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return ax


def _readable(ax):
    """Optuna's parallel coordinates with room for every axis's labels and visible lines."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import ListedColormap

    name, top = PARALLEL_CMAP
    cmap = ListedColormap(matplotlib.colormaps[name](np.linspace(0.0, top, 256)))
    axes = len(ax.figure.axes)
    ax.figure.set_size_inches(max(8.0, 2.2 * axes), 5.5)
    for other in ax.figure.axes:
        for collection in other.collections:
            collection.set_cmap(cmap)
        other.tick_params(which="both", labelsize=8)  # a log axis labels its minor ticks too
    ax.tick_params(axis="x", labelrotation=15)
    ax.figure.tight_layout()
    return ax


def portable_storage(url: str, root: Path | None) -> str:
    """The storage as a clone would write it: an SQLite file under the project root relative to
    it (``sqlite:///optuna.db``), any other URL without its credentials."""
    url = redacted(url)
    if root is not None and url.startswith("sqlite:////"):
        path = Path(url.removeprefix("sqlite:///"))
        if path.is_relative_to(root):
            return f"sqlite:///{path.relative_to(root).as_posix()}"
    return url


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value).replace("|", "\\|")


def best_epoch_value(trial, direction: str) -> float | None:
    """A trial's value by its best epoch: a complete trial's value; for a pruned one the best of the
    epochs it reported (Optuna keeps its last), as its run's ``best_<metric>`` in MLflow."""
    import optuna

    if trial.state == optuna.trial.TrialState.COMPLETE or not trial.intermediate_values:
        return trial.value
    return (max if direction == "maximize" else min)(trial.intermediate_values.values())


def write_search_report(study, summary: dict, folder: Path, root: Path | None = None) -> list[Path]:
    """Writes the report and its plots; returns their paths, the Markdown file first. ``root``:
    the project root, which a storage file below it is written relative to."""
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
        f"| storage | `{portable_storage(summary['storage'], root)}` |",
        f"| objective | {metric}, {summary['direction']} (the best epoch's value of each trial) |",
        f"| sampler, pruner | {summary['sampler']}, {summary['pruner']} |",
        f"| trials | {summary['trials']}: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed |",
        "| in MLflow | the parent run `search: " + name + "`; each trial a child run `trial <n>` |",
        "",
        "## Best trial",
        "",
    ]
    best = summary["best"]
    if best:
        lines += [
            f"Trial {best['number']}: **{metric} = {best['value']:.6g}** (MLflow: the run `trial {best['number']}`).",
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
    value = {t.number: best_epoch_value(t, summary["direction"]) for t in trials}
    ranked = sorted(
        trials,
        key=lambda t: (order.get(t.state, 2), sign * value[t.number] if value[t.number] is not None else 0, t.number),
    )
    lines += [
        "",
        f"## Trials ({'best first' if len(ranked) <= MAX_ROWS else f'the best {MAX_ROWS} of {len(ranked)}'})",
        "",
        "| trial | state | " + " | ".join([metric, "epochs", *(f"`{p}`" for p in params), "seconds"]) + " |",
        "| " + " | ".join(["---"] * (len(params) + 5)) + " |",
    ]
    for t in ranked[:MAX_ROWS]:
        seconds = round(t.duration.total_seconds(), 1) if t.duration else None
        cells = [
            t.number,
            t.state.name.lower(),
            value[t.number],
            t.last_step,
            *(t.params.get(p) for p in params),
            seconds,
        ]
        lines.append("| " + " | ".join(_cell(v) for v in cells) + " |")
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({name}/{p.name})" for p in drawn]
    lines += [f"- not drawn: {why}" for why in skipped]
    report = folder / f"{name}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    page = folder / name / "report.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(as_html(lines, folder))
    return [report, *drawn, page]


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def as_html(lines: list[str], folder: Path) -> str:
    """The report as one self-contained HTML page, its plots inline: MLflow's artifact viewer
    shows HTML (Markdown only as text, and an HTML page there cannot load files beside it)."""
    body, table = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            if not set(line) <= set("|- "):
                table.append([_inline(c.strip()) for c in line.strip("|").split(" | ")])
            continue
        if table:
            head, *rows = table
            body.append(
                "<table><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
                + "</table>"
            )
            table = []
        image = re.fullmatch(r"!\[(.*)\]\((.+)\)", line)
        if image:
            data = base64.b64encode((folder / image[2]).read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(image[1])}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line:
            body.append(f"<p>{_inline(line.removeprefix('- '))}</p>")
    style = (
        "body{font-family:sans-serif;font-size:14px;margin:16px}table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
