"""``trainer.precision: auto``: bf16 mixed precision where the device has bf16 arithmetic of its
own, float32 elsewhere, and the run records the precision it used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from nnlab.config.compose import compose_config
from nnlab.train import train
from nnlab.training import precision

# The pipeline's CNN recipe, shrunk to a one-epoch training of a few seconds.
SMALL_CNN = ("experiment=mnist_cnn", "model.channels=[4,8]", "model.hidden_size=16", "trainer.max_epochs=1")


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel lists them (Linux), read apart from torch."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_auto_means_bf16_exactly_where_the_cpu_has_bf16_instructions():
    native = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile"})
    assert precision.native_bf16("cpu") is native
    trainer = OmegaConf.create({"accelerator": "cpu", "precision": "auto"})
    assert precision.resolve(trainer) == ("bf16-mixed" if native else "32-true")
    assert trainer.precision == ("bf16-mixed" if native else "32-true")


def test_auto_is_float32_where_bf16_would_be_emulated(monkeypatch):
    for check in precision.CPU_BF16_CHECKS:  # a CPU without AVX512-BF16 or AMX, such as AVX2 only
        monkeypatch.setattr(torch.cpu, check, lambda: False)
    assert precision.resolve(OmegaConf.create({"accelerator": "cpu", "precision": "auto"})) == "32-true"
    assert precision.native_bf16("mps") is False
    cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    assert precision.native_bf16("cuda") is cuda_bf16


def test_a_chosen_precision_is_kept_and_the_accelerator_names_the_device():
    for chosen in ("32-true", "bf16-mixed", "64-true"):
        trainer = OmegaConf.create({"accelerator": "cpu", "precision": chosen})
        assert precision.resolve(trainer) == chosen and trainer.precision == chosen
    assert [precision.device_type(a) for a in ("gpu", "cuda", "cpu", "mps")] == ["cuda", "cuda", "cpu", "mps"]
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert precision.device_type("auto") == expected


def test_the_pipeline_cnn_asks_for_auto_and_other_experiments_keep_float32(project):
    assert compose_config(["experiment=mnist_cnn"]).trainer.precision == "auto"
    for experiment in ("mnist_mlp", "mnist_linear", "blobs_linear", "ref_e3_cnn", "mnist_cnn_best"):
        assert compose_config([f"experiment={experiment}"]).trainer.precision == "32-true", experiment


def test_a_training_with_auto_records_the_precision_it_used(compose, project, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose(*SMALL_CNN, "name=auto_cnn", f"logger.mlflow.tracking_uri={uri}")
    used = "bf16-mixed" if precision.native_bf16("cpu") else "32-true"
    summary = train(cfg)
    assert summary["epochs"] == 1 and 0.0 <= summary["test_acc"] <= 1.0
    params = yaml.safe_load((project / "metrics" / "auto_cnn" / "params.yaml").read_text())
    assert params["trainer"]["precision"] == used
    saved = yaml.safe_load((project / "models" / "auto_cnn" / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == used
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("nnlab-mnist").experiment_id])
    assert run.data.params["trainer.precision"] == used


@pytest.mark.parametrize("chosen", ["32-true", "bf16-mixed"])
def test_the_same_seed_trains_the_same_weights_in_either_precision(compose, project, chosen):
    weights = []
    for attempt in range(2):
        train(compose(*SMALL_CNN, f"name=again_{attempt}", f"trainer.precision={chosen}", "logger=none"))
        state = torch.load(project / "models" / f"again_{attempt}" / "best.ckpt", weights_only=True)["state_dict"]
        weights.append(state)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
