"""reports/bench.json (everything) and reports/bench.md (the tables), with the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def machine(env: dict[str, str] | None = None) -> dict:
    """The machine as a measured process sees it, probed in a child process: the benchmark's own
    process never imports torch, so that the peak RSS of the processes it starts stays theirs
    (a child's peak counts the parent's memory at fork time)."""
    probe = "import json; from nnlab.benchmark.report import probe; print(json.dumps(probe()))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def probe() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "platform": platform.platform(),
    }


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _range(s: dict, digits: int = 2, scale: float = 1.0) -> str:
    """median (min–max)"""
    if not s or s.get("median") is None:
        return "–"
    med, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if s.get("n", 1) < 2:
        return _fmt(med, digits)
    return f"{_fmt(med, digits)} ({_fmt(lo, digits)}–{_fmt(hi, digits)})"


def markdown(result: dict) -> str:
    m, opts = result["machine"], result["options"]
    lines = [
        "# nnlab benchmark",
        "",
        f"`{result['command']}` at {result['finished']} UTC.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"torch threads per process: {m['torch_threads']}" + (" (--threads)" if opts.get("threads") else "") + ", "
        f"device {m['device']}, Python {m['python']}, torch {m['torch']}. "
        f"Load average {result['load_before'][0]:.1f} before, {result['load_after'][0]:.1f} after "
        "(a shared machine: other processes were running).",
        "",
        f"Median (min–max) of {opts['repeats']} interleaved repetitions, each run in its own process.",
    ]
    if result.get("training"):
        lines += [
            "",
            "## Training steps: nnlab's training command against a plain PyTorch loop",
            "",
            "nnlab: `python -m nnlab.train experiment=<case>` as the DVC stage runs it (Trainer, module, data "
            "module, callbacks, checkpoints, MLflow run; blocks of `steps_per_call` optimizer steps per "
            "Lightning batch where the config allows them). Plain: the same network, optimizer, schedule, seed, "
            "batch size and tensors in a bare loop. Lightning: nnlab's module and data module in a bare "
            "Lightning Trainer (no callbacks, logger, checkpoints, progress bar or MLflow) with one batch per "
            "call (its one training path, with blocks of one batch), so that Lightning/plain is the cost of Lightning's own loop per "
            "step and nnlab/Lightning what nnlab's structure adds to it, less what its blocks save. A block's "
            "steps end at one time stamp: ms/step is the time from the end of the first block (or step) past "
            "the warm-up to the end of the last, over the optimizer steps between. ms/step is the steady state after "
            f"{opts['warmup']} warm-up steps (wall clock); CPU ratio: nnlab/plain from the process's CPU time, "
            "which load from other processes moves far less; first step: seconds from launching the process "
            "to the end of its first step; RSS: peak of the whole process.",
            "",
            "| case | batch | precision | steps | plain ms/step | Lightning ms/step | nnlab ms/step | nnlab/plain | CPU ratio "
            "| Lightning/plain | nnlab/Lightning | nnlab samples/s "
            "| plain RSS MB | nnlab RSS MB | plain first step s | nnlab first step s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in result["training"]:
            lines.append(
                f"| {r['case']} | {r['batch_size']} | {r['precision']} | {r['measured_steps']} | {_range(r['plain_ms_per_step'])} | "
                f"{_range(r['lightning_ms_per_step'])} | {_range(r['nnlab_ms_per_step'])} | "
                f"**{r['ratio']:.2f}** | {r['cpu_ratio']:.2f} | {r['lightning_ratio']:.2f} | "
                f"{r['structure_ratio']:.2f} | {_range(r['nnlab_samples_per_s'], 0)} | "
                f"{_range(r['plain_max_rss_mb'], 0)} | {_range(r['nnlab_max_rss_mb'], 0)} | "
                f"{_range(r['plain_to_first_step_s'], 1)} | {_range(r['nnlab_to_first_step_s'], 1)} |"
            )
    if result.get("profile"):
        lines += _profile_tables(result["profile"])
    if result.get("startup"):
        lines += [
            "",
            "## Start-up: `python -m nnlab.<stage> --help`",
            "",
            "| stage | seconds | CPU seconds | peak RSS MB | imports |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in result["startup"]:
            imports = ", ".join(r["imports"] or []) or "none of them"
            lines.append(
                f"| {r['stage']} | {_range(r['help_s'])} | {_range(r['help_cpu_s'])} | "
                f"{_range(r['max_rss_mb'], 0)} | {imports} |"
            )
    if result.get("pipeline"):
        p = result["pipeline"]
        lines += [
            "",
            "## `dvc repro` of a small configuration",
            "",
            f"{p['config']}; {p['stages']} stages.",
            "",
            "| cold (every stage runs) | warm (nothing to run) |",
            "| --- | --- |",
            f"| {_range(p['cold_s'], 1)} s | {_range(p['warm_s'], 1)} s |",
        ]
    return "\n".join(lines) + "\n"


def _profile_tables(rows: list[dict]) -> list[str]:
    """Self time per step of each part of a bare Lightning step, under cProfile, per case."""
    parts = list(dict.fromkeys(part for row in rows for part in row["parts"]))
    lines = [
        "",
        "## Where a step's time goes: the bare Lightning run under cProfile",
        "",
        "Self time per step (ms) of each part, from the warm-up to the end of the first epoch. Profiling slows "
        "Python code far more than torch's C++ kernels, so the shares overstate the Python parts; "
        "the Lightning/plain ratio above is the unprofiled cost.",
        "",
        "| part | " + " | ".join(row["case"] for row in rows) + " |",
        "| --- |" + " --- |" * len(rows),
    ]
    for part in parts:
        cells = []
        for row in rows:
            value = row["parts"].get(part, 0.0)
            cells.append(f"{value:.3f} ({100 * value / row['ms_per_step']:.0f} %)")
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("| **all (profiled)** | " + " | ".join(f"**{row['ms_per_step']:.3f}**" for row in rows) + " |")
    first = rows[0]
    lines += [
        "",
        f"Lightning's costliest functions in {first['case']} (self ms per step):",
        "",
        *(f"- `{name}` {ms:.3f}" for name, ms in first["lightning_top"]),
    ]
    return lines


def write(result: dict, out_dir: Path, name: str = "bench") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(markdown(result))
    return json_path, md_path
