"""The measurements: each in its own process, repetitions interleaved, median with min and max.

- training: for each case (an experiment, maybe at another batch size), nnlab's real training
  command and the plain loop, one after the other in every repetition;
- startup: ``python -m nnlab.<stage> --help`` of every stage, interleaved;
- pipeline: a cold and a warm ``dvc repro`` of a small configuration in a temporary copy of the
  project (synthetic MNIST, one epoch), as tests/test_pipeline.py builds one.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# What each stage imports at start-up is reported beside its time.
HEAVY_MODULES = ("torch", "lightning", "mlflow", "torchmetrics", "matplotlib", "hydra")
STAGES = ("prepare_mnist", "prepare_blobs", "train", "evaluate", "compare", "predict")


@dataclass
class Case:
    """One training measurement: an experiment config, optionally at another batch size."""

    experiment: str
    batch_size: int | None = None  # None: the experiment's own
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.experiment + (f"@{self.batch_size}" if self.batch_size else "")

    @classmethod
    def parse(cls, text: str) -> Case:
        """``mnist_mlp``, ``mnist_mlp@64`` or a model name (``mlp`` means ``mnist_mlp``)."""
        name, _, batch = text.partition("@")
        if not name.startswith("mnist_"):
            name = f"mnist_{name}"
        return cls(name, int(batch) if batch else None)


@dataclass
class Proc:
    seconds: float
    cpu_s: float  # user + system time of the process
    max_rss_mb: float
    returncode: int
    output: str
    started_at: float


def run_process(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 1800) -> Proc:
    """Wall time and peak RSS (the child's own, from wait4) of one process."""
    with tempfile.TemporaryFile("w+") as log:
        started_at = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        # ru_maxrss is in KiB on Linux
        cpu = usage.ru_utime + usage.ru_stime
        return Proc(seconds, cpu, usage.ru_maxrss / 1024, proc.returncode, log.read(), started_at)


def stats(values: list[float]) -> dict:
    values = [v for v in values if v == v]  # drop nan
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def child_env(root: Path, **extra: str) -> dict[str, str]:
    """The venv's bin/ first on PATH, nnlab rooted in ``root``, no tracking server from outside."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        env.pop(var, None)
    env["NNLAB_ROOT"] = str(root)
    env.update(extra)
    return env


def scratch_project(data_root: Path, where: Path) -> Path:
    """A project root whose data/ is the real one (linked) and whose outputs, logs and MLflow
    store are its own, so the benchmark never writes into the project."""
    root = where / "project"
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text("{}\n")
    (root / "data").symlink_to(data_root / "data", target_is_directory=True)
    return root


# --------------------------------------------------------------------------------------------
# training


def _case_overrides(case: Case, steps: int | None) -> list[str]:
    overrides = [f"experiment={case.experiment}", "trainer.max_epochs=1", *case.overrides]
    if case.batch_size:
        overrides.append(f"data.batch_size={case.batch_size}")
    if steps:
        overrides.append(f"trainer.limit_train_batches={steps}")
    return overrides


def measure_training(case: Case, kind: str, root: Path, steps: int | None, warmup: int, env: dict) -> dict:
    """One process: kind ``nnlab`` (the training command as a DVC stage runs it, with its MLflow
    run, checkpoints and validation), ``lightning`` (nnlab's module in a bare Trainer), ``plain``
    or ``profile``. Returns the worker's timings plus the process's peak RSS, wall time and the
    time from launch to the end of the first step."""
    out = root / f"timing-{kind}-{case.name}-{time.time_ns()}.json"
    overrides = _case_overrides(case, steps)
    if kind == "nnlab":  # the stage's own overrides: name (its run folder), no test afterwards
        overrides += [f"name=bench_{case.name.replace('@', '_b')}", "test_after_fit=false"]
    args = [sys.executable, "-m", "nnlab.bench", "--worker", kind, "--worker-out", str(out), "--warmup", str(warmup)]
    proc = run_process([*args, "--", *overrides], root, env)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{kind} {case.name} failed (exit {proc.returncode}):\n{proc.output[-3000:]}")
    result = json.loads(out.read_text())
    out.unlink()
    result.update(
        process_s=proc.seconds,
        max_rss_mb=proc.max_rss_mb,
        to_first_step_s=result["first_step_at"] - proc.started_at if "first_step_at" in result else None,
    )
    return result


KINDS = ("plain", "lightning", "nnlab")  # the timed workers (workers.WORKERS); "profile" runs apart
TIMINGS = ("ms_per_step", "cpu_ms_per_step", "samples_per_s", "max_rss_mb", "to_first_step_s", "first_step_s")


def training_suite(cases: list[Case], root: Path, repeats: int, steps: int | None, warmup: int, log) -> list[dict]:
    """Every case's plain, bare-Lightning and nnlab runs, interleaved (the order rotating from
    one repetition to the next, so that none is always first after another case)."""
    env = child_env(root)
    raw: dict[str, dict[str, list[dict]]] = {c.name: {k: [] for k in KINDS} for c in cases}
    for rep in range(repeats):
        for case in cases:
            for kind in KINDS[rep % 3 :] + KINDS[: rep % 3]:
                result = measure_training(case, kind, root, steps, warmup, env)
                raw[case.name][kind].append(result)
                log(
                    f"  [{rep + 1}/{repeats}] {case.name:18s} {kind:9s} {result['ms_per_step']:8.3f} ms/step "
                    f"(CPU {result['cpu_ms_per_step']:7.3f}) "
                    f"{result['samples_per_s']:10.0f} samples/s  rss {result['max_rss_mb']:6.0f} MB"
                )
    return [_training_row(case, raw[case.name]) for case in cases]


def _ratios(runs: dict[str, list[dict]], top: str, bottom: str, key: str) -> tuple[float, dict]:
    """The ratio of the medians (robust to a slow repetition on a shared machine), and per pair."""
    median = statistics.median(r[key] for r in runs[top]) / statistics.median(r[key] for r in runs[bottom])
    pairs = [a[key] / b[key] for a, b in zip(runs[top], runs[bottom], strict=True)]
    return median, stats(pairs)


def _training_row(case: Case, runs: dict[str, list[dict]]) -> dict:
    row = {
        "case": case.name,
        "experiment": case.experiment,
        "batch_size": case.batch_size or _configured_batch_size(case.experiment),
        "steps": runs["nnlab"][0]["steps"],
        "measured_steps": runs["nnlab"][0]["measured_steps"],
        "accelerator": runs["nnlab"][0]["accelerator"],
        "precision": _same_precision(case, runs),
    }
    for kind in KINDS:
        for key in TIMINGS:
            row[f"{kind}_{key}"] = stats([r[key] for r in runs[kind]])
    row["nnlab_fit_s"] = stats([r["fit_s"] for r in runs["nnlab"]])
    # ratio: nnlab / plain (the goal); lightning_ratio: Lightning's own loop / plain;
    # structure_ratio: nnlab / bare Lightning (what nnlab's callbacks, logging and MLflow add, less
    # what its blocks of optimizer steps save)
    for name, top, bottom in (
        ("", "nnlab", "plain"),
        ("lightning_", "lightning", "plain"),
        ("structure_", "nnlab", "lightning"),
    ):
        row[f"{name}ratio"], row[f"{name}ratio_per_pair"] = _ratios(runs, top, bottom, "ms_per_step")
        row[f"{name}cpu_ratio"], row[f"{name}cpu_ratio_per_pair"] = _ratios(runs, top, bottom, "cpu_ms_per_step")
    return row


def _same_precision(case: Case, runs: dict[str, list[dict]]) -> str:
    """The precision every run of the case trained in: a comparison across precisions is no comparison."""
    used = {r["precision"] for kind in KINDS for r in runs[kind]}
    if len(used) != 1:
        raise RuntimeError(f"{case.name}: the runs trained in different precisions ({', '.join(sorted(used))})")
    return used.pop()


def profile_suite(cases: list[Case], root: Path, steps: int | None, warmup: int, log) -> list[dict]:
    """Each case's bare Lightning run once under cProfile: the self time per step of each part
    (profiling inflates Python code more than C++ kernels: compare parts, not absolute times)."""
    env = child_env(root)
    rows = []
    for case in cases:
        result = measure_training(case, "profile", root, steps, warmup, env)
        rows.append(
            {"case": case.name, **{k: result[k] for k in ("profiled_steps", "ms_per_step", "parts", "lightning_top")}}
        )
        lightning = sum(v for k, v in result["parts"].items() if k.startswith("Lightning"))
        log(f"  {case.name:18s} {result['ms_per_step']:.3f} ms/step profiled, Lightning's own code {lightning:.3f}")
    return rows


def _configured_batch_size(experiment: str) -> int | None:
    from nnlab.config.paths import conf_dir

    spec = yaml.safe_load((conf_dir() / "experiment" / f"{experiment}.yaml").read_text())
    return (spec.get("data") or {}).get("batch_size")


# --------------------------------------------------------------------------------------------
# start-up


def startup_suite(stages: list[str], root: Path, repeats: int, log) -> list[dict]:
    """``python -m nnlab.<stage> --help``: wall time and peak RSS, one warm-up round (the file
    cache), then ``repeats`` interleaved rounds; and which heavy modules importing it loads."""
    env = child_env(root)
    times: dict[str, list[Proc]] = {s: [] for s in stages}
    for rep in range(repeats + 1):
        for stage in stages:
            proc = run_process([sys.executable, "-m", f"nnlab.{stage}", "--help"], root, env)
            if proc.returncode != 0:
                raise RuntimeError(f"nnlab.{stage} --help failed:\n{proc.output[-2000:]}")
            if rep:
                times[stage].append(proc)
    rows = []
    for stage in stages:
        probe = (
            f"import importlib, json, sys; importlib.import_module('nnlab.{stage}'); "
            f"print(json.dumps([m for m in {list(HEAVY_MODULES)!r} if m in sys.modules]))"
        )
        imported = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True)
        row = {
            "stage": stage,
            "help_s": stats([p.seconds for p in times[stage]]),
            "help_cpu_s": stats([p.cpu_s for p in times[stage]]),
            "max_rss_mb": stats([p.max_rss_mb for p in times[stage]]),
            "imports": json.loads(imported.stdout.strip().splitlines()[-1]) if imported.returncode == 0 else None,
        }
        log(
            f"  {stage:14s} --help {row['help_s']['median']:.2f} s (CPU {row['help_cpu_s']['median']:.2f} s)  rss {row['max_rss_mb']['median']:.0f} MB  {row['imports']}"
        )
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# pipeline


def pipeline_copy(project: Path, where: Path, train_overrides: str) -> Path:
    """A fresh git + DVC repository with the project's dvc.yaml, conf/ and src/, on synthetic MNIST."""
    from nnlab.benchmark.synthetic import write_idx_dir

    repo = where / "repo"
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", "conf", "src"):
        source = project / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, repo / name)
    md5s = write_idx_dir(where / "raw")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["mnist"].update(source="dir", dir=str(where / "raw"), md5=md5s, val_size=100)
    params["train_overrides"] = train_overrides
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = child_env(repo)
    env.pop("NNLAB_ROOT")
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(args, cwd=repo, env=env, check=True, capture_output=True)
    return repo


def pipeline_suite(project: Path, repeats: int, train_overrides: str, log) -> dict:
    """Cold (every stage runs) and warm (nothing to run) ``dvc repro``, each repetition in a
    fresh copy."""
    cold, warm, stages_run = [], [], 0
    for rep in range(repeats):
        with tempfile.TemporaryDirectory(prefix="nnlab-bench-dvc-") as tmp:
            repo = pipeline_copy(project, Path(tmp), train_overrides)
            env = child_env(repo)
            env.pop("NNLAB_ROOT")
            first = run_process(["dvc", "repro"], repo, env)
            if first.returncode != 0:
                raise RuntimeError(f"dvc repro failed:\n{first.output[-3000:]}")
            second = run_process(["dvc", "repro"], repo, env)
            if second.returncode != 0:
                raise RuntimeError(f"second dvc repro failed:\n{second.output[-3000:]}")
            stages_run = first.output.count("Running stage")
            cold.append(first.seconds)
            warm.append(second.seconds)
            log(
                f"  [{rep + 1}/{repeats}] dvc repro cold {first.seconds:.1f} s ({stages_run} stages), warm {second.seconds:.1f} s"
            )
    return {
        "config": f"synthetic MNIST (600 train / 200 test images), blobs, train_overrides={train_overrides!r}",
        "stages": stages_run,
        "cold_s": stats(cold),
        "warm_s": stats(warm),
    }
