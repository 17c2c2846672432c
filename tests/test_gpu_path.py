"""The GPU path's code, run on the CPU so that it cannot rot unseen: bf16 autocast with NHWC
convolutions, torch.compile as a config switch, data cut where the trainer's device is, the
fused optimizer options, and epoch metrics that never wait for the device."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from nnlab.data.tensors import TensorBatches, random_shift
from nnlab.models.module import Classifier, RunningAccuracy, RunningMean, fast_optimizer_options
from nnlab.models.networks import CNN, MLP
from nnlab.train import train


def test_bf16_autocast_with_channels_last_and_compile_on_the_cpu(compose, project):
    cfg = compose(
        "experiment=mnist_cnn",
        "model.channels=[4,8]",
        "model.hidden_size=16",
        "trainer.max_epochs=1",
        "trainer.precision=bf16-mixed",
        "compile=eager",
        "logger=none",
    )
    summary = train(cfg)
    assert summary["epochs"] == 1 and math.isfinite(summary["final_train_loss"])
    assert 0.0 <= summary["best_val_acc"] <= 1.0 and 0.0 <= summary["test_acc"] <= 1.0


def test_convolutions_train_channels_last_on_the_cpu_and_cuda_and_nothing_else_changes_layout():
    class Strategy:  # what configure_model reads: the device the strategy will move the module to
        def __init__(self, device):
            self.root_device = torch.device(device)

    class Trainer:
        def __init__(self, device):
            self.strategy = Strategy(device)

    cnn = functools.partial(CNN, (1, 28, 28), 10, channels=(2, 4), hidden_size=8)
    cases = [(cnn(), "cpu", True), (cnn(), "cuda", True), (cnn(), "mps", False)]
    cases.append((MLP((1, 28, 28), 10, hidden_sizes=(8,)), "cpu", False))
    for net, device, expected in cases:
        module = Classifier(net, torch.optim.Adam)
        module._trainer = Trainer(device)
        module.configure_model()
        assert module.channels_last is expected, device
        # the second convolution's weight (4, 2, 3, 3) has one layout or the other, not both
        # (the first one's, with one input channel, has both; the MLP has neither)
        for weight in [p for p in module.net.parameters() if p.dim() == 4][-1:]:
            assert weight.is_contiguous(memory_format=torch.channels_last) is expected, device
            assert weight.is_contiguous() is not expected, device


def test_fused_optimizers_on_cuda_only_and_never_against_the_config():
    adam = functools.partial(torch.optim.Adam, lr=1e-3)
    assert fast_optimizer_options(adam, torch.device("cpu")) == {}
    assert fast_optimizer_options(adam, torch.device("cuda")) == {"fused": True}
    assert fast_optimizer_options(functools.partial(torch.optim.RMSprop, lr=1e-3), "cuda") == {"foreach": True}
    assert fast_optimizer_options(functools.partial(torch.optim.Adam, lr=1e-3, foreach=False), "cuda") == {}
    # the configs' null: not chosen, so nnlab's choice
    unset = functools.partial(torch.optim.AdamW, lr=1e-3, fused=None, foreach=None)
    assert fast_optimizer_options(unset, "cuda") == {"fused": True}
    assert fast_optimizer_options(unset, "cpu") == {}


def test_the_config_chooses_a_fused_optimizer_on_the_cpu_too(compose, project):
    """optimizer.fused=true: torch's one-kernel Adam on the CPU, the same algorithm as the default
    single-tensor path (weights equal up to rounding), recorded in the checkpoint's optimizer state."""
    states = {}
    for fused in ("null", "true"):
        overrides = ("experiment=blobs_linear", "trainer.max_epochs=2", f"optimizer.fused={fused}")
        train(compose(*overrides, f"name=fused-{fused}", "logger=none"))
        best = project / "models" / f"fused-{fused}" / "best.ckpt"
        states[fused] = torch.load(best, map_location="cpu", weights_only=True)
    assert states["null"]["epoch"] == states["true"]["epoch"]
    assert states["null"]["optimizer_states"][0]["param_groups"][0]["fused"] is None
    assert states["true"]["optimizer_states"][0]["param_groups"][0]["fused"] is True
    assert states["null"]["state_dict"].keys() == states["true"]["state_dict"].keys()
    for key, value in states["null"]["state_dict"].items():
        torch.testing.assert_close(states["true"]["state_dict"][key], value, rtol=1e-4, atol=1e-5)


def test_batches_are_cut_where_the_data_is_and_shifts_are_device_independent():
    x = torch.arange(6 * 1 * 4 * 4, dtype=torch.float32).reshape(6, 1, 4, 4)
    y = torch.arange(6)
    meta = TensorBatches(x.to("meta"), y.to("meta"), batch_size=4, shuffle=True, seed=3)
    assert all(bx.device.type == "meta" and by.device.type == "meta" for bx, by in meta)
    cpu = [b for b, _ in TensorBatches(x, y, batch_size=4, shuffle=True, seed=3, shift=1)]
    again = [b for b, _ in TensorBatches(x, y, batch_size=4, shuffle=True, seed=3, shift=1)]
    assert all(torch.equal(a, b) for a, b in zip(cpu, again, strict=True))
    shifted = random_shift(x, 1, -1.0, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and set(shifted.unique().tolist()) <= set(x.unique().tolist()) | {-1.0}


def test_epoch_metrics_equal_the_torchmetrics_values():
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy

    gen = torch.Generator().manual_seed(0)
    mine_acc, mine_loss = RunningAccuracy(), RunningMean()
    ref_acc, ref_loss = MulticlassAccuracy(10, average="micro"), MeanMetric(nan_strategy=float("inf"))
    for n in (128, 128, 37):
        logits, target = torch.randn(n, 10, generator=gen), torch.randint(0, 10, (n,), generator=gen)
        loss = torch.nn.functional.cross_entropy(logits, target)
        mine_acc.update(logits, target)
        ref_acc.update(logits, target)
        mine_loss.update(loss, weight=n)
        ref_loss.update(loss, weight=n)
    assert mine_acc.compute().item() == ref_acc.compute().item()
    assert mine_loss.compute().item() == ref_loss.compute().item()
    mine_loss.update(torch.tensor(float("nan")), weight=3)
    assert mine_loss.compute().item() == math.inf
    mine_loss.reset()
    mine_acc.reset()
    assert mine_acc.correct.item() == mine_acc.total == 0 and mine_loss.weight == 0


@pytest.mark.parametrize("backend", ["nonsense"])
def test_an_unknown_compile_backend_is_a_config_error(compose, backend):
    from nnlab.config.schema import ConfigError, validate

    with pytest.raises(ConfigError, match="compile: must be one of inductor"):
        validate(compose(f"compile={backend}"))
