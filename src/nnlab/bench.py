"""Speed benchmark: ``python -m nnlab.bench`` (``make bench``).

Times nnlab's real training command (linear, MLP, CNN at their configured batch sizes, and the MLP
at batch 64) against a plain PyTorch loop on the same tensors and against nnlab's module in a bare
Lightning Trainer taking one batch per call (what Lightning's loop costs by itself), the start-up of
every stage command, and a cold and a warm ``dvc repro`` of a small configuration. Every measurement runs in
its own process; repetitions are interleaved; the tables give the median (min–max). Writes
reports/bench.json and reports/bench.md. Needs the prepared MNIST (``dvc repro prepare_mnist``).

    python -m nnlab.bench                          # everything (the longest: whole epochs and dvc repro)
    python -m nnlab.bench --quick                  # 150 steps per run, 2 repetitions, no dvc repro
    python -m nnlab.bench --models mlp --repeats 5 --parts training
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from nnlab.benchmark import workers  # the standard library only, until a worker runs

DEFAULT_CASES = "linear,mlp,cnn,mlp@64"
PARTS = ("training", "profile", "startup", "pipeline")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnlab.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--models", default=DEFAULT_CASES, help=f"cases: model[@batch], comma-separated (default {DEFAULT_CASES})"
    )
    p.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 3; --quick 2)")
    p.add_argument(
        "--steps", type=int, default=None, help="training steps per run (default: one whole epoch; --quick 150)"
    )
    p.add_argument("--warmup", type=int, default=20, help="steps left out of ms/step (default 20)")
    p.add_argument(
        "--parts", default=",".join(PARTS), help=f"what to measure (default {','.join(PARTS)}; --quick: no pipeline)"
    )
    p.add_argument("--stages", default=None, help="stages whose start-up is timed (default: all)")
    p.add_argument("--quick", action="store_true", help="fewer steps and repetitions, no dvc repro")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in every measured process (default: torch's, one per core)",
    )
    p.add_argument(
        "--override", action="append", default=[], help="a Hydra override for every training case (repeatable)"
    )
    p.add_argument("--out-dir", default=None, help="where the two files go (default: <root>/reports)")
    p.add_argument("--name", default="bench", help="their name: <name>.json and <name>.md (default bench)")
    p.add_argument("--worker", choices=list(workers.WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.worker:  # one measured process (see nnlab.benchmark.workers)
        workers.WORKERS[args.worker](Path(args.worker_out), args.warmup, args.overrides)
        return
    from nnlab.benchmark import report, suite
    from nnlab.config.paths import find_root

    root = find_root()
    if args.threads:  # every measured process, nnlab and plain alike (and the machine probe)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    steps = args.steps or (150 if args.quick else None)
    parts = [p for p in args.parts.split(",") if p]
    if args.quick and args.parts == ",".join(PARTS):
        parts = ["training", "profile", "startup"]
    unknown = set(parts) - set(PARTS)
    if unknown:
        sys.exit(f"nnlab.bench: error: --parts: unknown {sorted(unknown)}; choose from {', '.join(PARTS)}")
    cases = [suite.Case.parse(c.strip()) for c in args.models.split(",") if c.strip()]
    for case in cases:
        case.overrides = list(args.override)
    stages = args.stages.split(",") if args.stages else list(suite.STAGES)
    command = "python -m nnlab.bench " + " ".join(argv if argv is not None else sys.argv[1:])

    def log(line: str) -> None:
        print(line, flush=True)

    result = {
        "command": command.strip(),
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": report.machine(suite.child_env(root)),
        "options": {
            "repeats": repeats,
            "steps": steps,
            "warmup": args.warmup,
            "threads": args.threads,
            "parts": parts,
            "overrides": args.override,
        },
        "load_before": list(os.getloadavg()),
    }
    with tempfile.TemporaryDirectory(prefix="nnlab-bench-") as tmp:
        scratch = suite.scratch_project(root, Path(tmp))
        if "training" in parts:
            log(f"training ({len(cases)} cases x {repeats} repetitions, nnlab and plain)")
            if not (root / "data" / "mnist" / "manifest.json").is_file():
                sys.exit("nnlab.bench: error: no prepared MNIST in data/mnist: run `dvc repro prepare_mnist` first")
            result["training"] = suite.training_suite(cases, scratch, repeats, steps, args.warmup, log)
        if "profile" in parts:
            log(f"profile ({len(cases)} cases, the bare Lightning run under cProfile)")
            result["profile"] = suite.profile_suite(cases, scratch, steps, args.warmup, log)
        if "startup" in parts:
            log(f"start-up ({len(stages)} stages x {repeats} repetitions)")
            result["startup"] = suite.startup_suite(stages, scratch, repeats, log)
        if "pipeline" in parts:
            log("dvc repro of a small configuration (cold, then warm)")
            overrides = "trainer.max_epochs=1 trainer.enable_progress_bar=false"
            result["pipeline"] = suite.pipeline_suite(root, max(1, repeats // 3), overrides, log)
    result["load_after"] = list(os.getloadavg())
    result["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    json_path, md_path = report.write(result, Path(args.out_dir) if args.out_dir else root / "reports", args.name)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path} ({time.strftime('%H:%M:%S')})")


if __name__ == "__main__":
    main()
