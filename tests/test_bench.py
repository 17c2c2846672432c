"""The benchmark command runs and writes valid output (no timing assertions: values are only
checked to be measured, positive and where they belong)."""

from __future__ import annotations

import json
import math

import pytest

from nnlab.benchmark import workers
from nnlab.benchmark.suite import KINDS, Case, _same_precision
from nnlab.benchmark.workers import run_plain

from helpers import run_module


def _positive(stat: dict) -> bool:
    return all(
        isinstance(stat[k], (int, float)) and math.isfinite(stat[k]) and stat[k] > 0 for k in ("median", "min", "max")
    )


def test_a_tiny_benchmark_writes_json_and_markdown(project, tmp_path):
    out = tmp_path / "bench"
    result = run_module(
        "nnlab.bench",
        *("--models", "mlp@8", "--repeats", "1", "--steps", "40", "--warmup", "2", "--threads", "1"),
        *("--parts", "training,profile,startup", "--stages", "prepare_blobs,compare"),
        *("--out-dir", out, "--name", "tiny"),
        cwd=project,
        timeout=240,
        NNLAB_ROOT=str(project),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["tiny.json", "tiny.md"]
    bench = json.loads((out / "tiny.json").read_text())
    assert bench["machine"]["cores"] > 0 and bench["machine"]["torch"] and bench["machine"]["device"] == "cpu"
    assert bench["machine"]["torch_threads"] == 1
    [row] = bench["training"]
    # nnlab's training takes its 40 steps in blocks of 16 (one time stamp each): 16, 32, 40; the
    # first block covers the 2 warm-up steps, and the 24 steps of the other two are measured
    assert (row["case"], row["batch_size"], row["steps"], row["measured_steps"]) == ("mnist_mlp@8", 8, 40, 24)
    for kind in ("nnlab", "lightning", "plain"):
        for key in ("ms_per_step", "cpu_ms_per_step", "samples_per_s", "max_rss_mb", "to_first_step_s", "first_step_s"):
            assert _positive(row[f"{kind}_{key}"]), (kind, key, row[f"{kind}_{key}"])
    assert row["ratio"] > 0 and _positive(row["ratio_per_pair"])
    assert row["cpu_ratio"] > 0 and _positive(row["cpu_ratio_per_pair"])
    for name, top, bottom in (("lightning_", "lightning", "plain"), ("structure_", "nnlab", "lightning")):
        medians = row[f"{top}_ms_per_step"]["median"] / row[f"{bottom}_ms_per_step"]["median"]
        assert math.isclose(row[f"{name}ratio"], medians) and _positive(row[f"{name}ratio_per_pair"])
    # samples/s and ms/step describe the same steps
    assert math.isclose(row["nnlab_samples_per_s"]["median"] * row["nnlab_ms_per_step"]["median"] / 1000, 8)
    [profile] = bench["profile"]
    assert profile["case"] == "mnist_mlp@8" and profile["profiled_steps"] == 38  # steps 2..39
    assert math.isclose(sum(profile["parts"].values()), profile["ms_per_step"])
    assert all(value >= 0 for value in profile["parts"].values()) and profile["ms_per_step"] > 0
    lightning = [part for part in profile["parts"] if part.startswith("Lightning:")]
    assert "Lightning: hook dispatch" in lightning and "C: torch kernels, builtins" in profile["parts"]
    assert profile["lightning_top"] and all(name.startswith("lightning/") for name, _ in profile["lightning_top"])
    assert [s["stage"] for s in bench["startup"]] == ["prepare_blobs", "compare"]
    for stage in bench["startup"]:
        assert _positive(stage["help_s"]) and _positive(stage["help_cpu_s"]) and _positive(stage["max_rss_mb"])
        assert "lightning" not in stage["imports"] and "mlflow" not in stage["imports"]
    markdown = (out / "tiny.md").read_text()
    assert (
        "| mnist_mlp@8 | 8 | 32-true | 24 |" in markdown
        and "| Lightning: hook dispatch |" in markdown
        and "| compare |" in markdown
        and bench["machine"]["cpu"] in markdown
    )
    # the run wrote nothing into the project's own outputs
    assert not (project / "mlflow.db").exists() and not (project / "logs").exists()


def test_the_plain_loop_trains_in_the_precision_nnlab_trains_in(project, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what the worker process would set; restored after
    small = ["experiment=mnist_cnn", "model.channels=[4,8]", "model.hidden_size=16"]
    small += ["data.batch_size=16", "trainer.limit_train_batches=6"]  # 6 steps of which 3 measured
    for chosen in ("bf16-mixed", "32-true"):
        run_plain(tmp_path / f"{chosen}.json", 2, [*small, f"trainer.precision={chosen}"])
        result = json.loads((tmp_path / f"{chosen}.json").read_text())
        assert result["precision"] == chosen and (result["steps"], result["measured_steps"]) == (6, 3)
    with pytest.raises(RuntimeError, match="32-true or bf16-mixed, not '16-mixed'"):
        run_plain(tmp_path / "fp16.json", 2, [*small, "trainer.precision=16-mixed"])
    runs = {kind: [{"precision": "bf16-mixed"}] for kind in KINDS}
    assert _same_precision(Case("mnist_cnn"), runs) == "bf16-mixed"
    runs["plain"] = [{"precision": "32-true"}]
    with pytest.raises(RuntimeError, match="mnist_cnn: the runs trained in different precisions"):
        _same_precision(Case("mnist_cnn"), runs)


def test_each_loop_waits_for_its_device_only_at_the_stamps_the_timings_use(project, tmp_path, monkeypatch):
    """On CUDA a stamp is true only once the device has finished what was queued: the first step,
    the first past the warm-up and the last wait for it, no other (that would stall the queue)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    waits: list[str] = []
    monkeypatch.setattr(workers, "device_sync", lambda kind: lambda: waits.append(kind))
    small = ["experiment=mnist_mlp", "data.batch_size=16", "trainer.limit_train_batches=6"]
    for kind in ("plain", "lightning"):
        waits.clear()
        workers.WORKERS[kind](tmp_path / f"{kind}.json", 2, small)
        result = json.loads((tmp_path / f"{kind}.json").read_text())
        # steps 1..6 end at six stamps; the first, the third (the first past 2 warm-up steps), the sixth wait
        assert (result["steps"], result["measured_steps"], result["accelerator"]) == (6, 3, "cpu")
        assert waits == ["cpu"] * 3, kind
