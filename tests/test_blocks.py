"""One training path, Lightning's manual optimization, with blocks of one or more batches per
Lightning training batch (``steps_per_call``): every block size trains the same weights bit for
bit, an ordinary run (blocks of one) trains those of Lightning's automatic optimization, gradient
clipping included, and the per-step hooks fire at every step. Blocks of more than one only where
nothing Lightning does between its batches stands in the way; a clear error where something does."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from nnlab.config.schema import ConfigError
from nnlab.data.tensors import TensorBatches
from nnlab.models.module import Classifier
from nnlab.train import train
from nnlab.training.blocks import AUTO_STEPS_PER_CALL, steps_per_call

from helpers import REPO, run_module

VALUES = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")  # all but the timings


def _train(compose, project, name: str, *overrides: str) -> tuple[dict, list[dict], dict]:
    summary = train(compose(*overrides, f"name={name}", "logger=none"))
    checkpoint = torch.load(project / "models" / name / "best.ckpt", map_location="cpu", weights_only=False)
    with (project / "plots" / name / "history.csv").open() as handle:
        history = [{k: row[k] for k in VALUES} for row in csv.DictReader(handle)]
    return checkpoint, history, summary


@pytest.mark.parametrize(
    "overrides",
    [
        # a schedule over the steps (one-cycle), a partial last block, limit_train_batches in batches
        ("experiment=mnist_mlp", "data.batch_size=32", "trainer.max_epochs=2", "trainer.limit_train_batches=7"),
        # random shifts drawn batch by batch, dropout, a fraction of the batches
        ("experiment=mnist_cnn_best", "data.batch_size=32", "trainer.max_epochs=1", "trainer.limit_train_batches=0.5"),
        # bf16 autocast (the GPU path's precision, on the CPU)
        ("experiment=mnist_cnn", "data.batch_size=48", "trainer.max_epochs=1", "trainer.precision=bf16-mixed"),
        # 8-byte samples: pieces of the block start at any offset
        ("experiment=blobs_linear", "data.batch_size=10", "trainer.max_epochs=3"),
        # gradient clipping at every step of a block
        ("experiment=blobs_linear", "data.batch_size=10", "trainer.max_epochs=2", "trainer.gradient_clip_val=0.05"),
    ],
    ids=["mlp-onecycle-limit", "cnn-shift-fraction", "cnn-bf16", "blobs", "blobs-clip"],
)
def test_blocks_train_the_same_weights_and_history_as_one_batch_a_call(compose, project, overrides):
    one, one_history, one_summary = _train(compose, project, "one", *overrides, "steps_per_call=1")
    block, block_history, block_summary = _train(compose, project, "block", *overrides, "steps_per_call=3")

    assert one["global_step"] == block["global_step"] > 3  # Lightning's step count: every batch
    assert one["state_dict"].keys() == block["state_dict"].keys()
    for key, value in one["state_dict"].items():
        assert torch.equal(value, block["state_dict"][key]), key
    assert one["optimizer_states"][0]["state"].keys() == block["optimizer_states"][0]["state"].keys()
    for key, state in one["optimizer_states"][0]["state"].items():
        for name, value in state.items():
            assert torch.equal(
                torch.as_tensor(value), torch.as_tensor(block["optimizer_states"][0]["state"][key][name])
            )
    assert one_history == block_history and len(one_history) == one_summary["epochs"]
    assert one_summary["best_val_loss"] == block_summary["best_val_loss"]
    assert one_summary["test_acc"] == block_summary["test_acc"]


def test_the_blocks_hold_the_same_samples_as_the_batches_one_by_one():
    x = torch.arange(50 * 3 * 4 * 4, dtype=torch.float32).reshape(50, 3, 4, 4)
    y = torch.arange(50)

    def passes(per_call: int, limit=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batches = TensorBatches(x, y, 8, shuffle=True, seed=3, shift=1, fill=-1.0, per_call=per_call, limit=limit)
        return [list(batches), list(batches)], len(batches), batches.steps  # two passes: two orders

    (one, one_len, steps) = passes(1)
    (blocks, block_len, block_steps) = passes(3)
    assert (one_len, block_len, steps, block_steps) == (7, 3, 7, 7)
    assert [len(b[1]) for b in blocks[0]] == [24, 24, 2]
    for batches, joined in zip(one, blocks):
        assert torch.equal(torch.cat([b[0] for b in batches]), torch.cat([b[0] for b in joined]))
        assert torch.equal(torch.cat([b[1] for b in batches]), torch.cat([b[1] for b in joined]))
    (limited, limited_len, limited_steps) = passes(3, limit=4)
    assert (limited_len, limited_steps) == (2, 4) and [len(b[1]) for b in limited[0]] == [24, 8]
    assert torch.equal(torch.cat([b[1] for b in limited[0]]), torch.cat([b[1] for b in one[0][:4]]))
    assert passes(3, limit=0.5)[2] == 3  # a fraction of the batches, as Lightning rounds it


def test_a_shuffled_pass_cuts_its_batches_from_the_drawn_order_scaled_as_the_whole_split():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8, generator=gen)  # stored as MNIST's bytes
    y = torch.randint(0, 10, (50,), generator=gen)

    def scale(pixels):
        return pixels.float().div_(255.0).sub_(0.1307).div_(0.3081)

    batches = TensorBatches(x, y, 8, shuffle=True, seed=3, scale=scale, per_call=2)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3))  # the first pass's order
    got = list(batches)
    assert [len(b) for _, b in got] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([b for _, b in got]), y[order])
    assert torch.equal(torch.cat([b for b, _ in got]), scale(x)[order])


class _StepHooks(L.Callback):
    """Counts the hooks Lightning's automatic optimization fires around every optimizer step."""

    HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step")

    def __init__(self):
        self.calls = dict.fromkeys(self.HOOKS, 0)

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        self.calls["on_before_zero_grad"] += 1

    def on_before_backward(self, trainer, pl_module, loss):
        self.calls["on_before_backward"] += 1

    def on_after_backward(self, trainer, pl_module):
        self.calls["on_after_backward"] += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls["on_before_optimizer_step"] += 1


class _Automatic(Classifier):
    """The module under Lightning's automatic optimization: Lightning takes the step, steps the
    schedule and clips (``Trainer(gradient_clip_val=...)``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = True

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def on_before_optimizer_step(self, optimizer):
        pass  # Lightning clips


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, **kwargs)


def _bare_fit(cfg, module_class, per_call: int, clip: float | None, trainer_clip: float | None = None):
    """The config's module and data in a bare Trainer; returns (weights, global_step, hook counts)."""
    L.seed_everything(cfg.seed, verbose=False)
    module = module_class(
        instantiate(cfg.model),
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler),
        num_classes=cfg.data.num_classes,
        batch_size=cfg.data.batch_size,
        gradient_clip_val=clip,
    )
    data = instantiate(cfg.data)
    data.steps_per_call = per_call
    hooks = _StepHooks()
    trainer = _trainer(
        max_epochs=cfg.trainer.max_epochs,
        deterministic=True,
        gradient_clip_val=trainer_clip,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[hooks],
    )
    trainer.fit(module, datamodule=data)
    return module.net.state_dict(), trainer.global_step, hooks.calls


def test_blocks_of_one_train_as_automatic_optimization_and_clip_where_it_clips(compose):
    # one-cycle over the steps; a clip value small enough to clip every step
    cfg = compose("experiment=blobs_linear", "scheduler=onecycle", "data.batch_size=16", "trainer.max_epochs=2")
    automatic, auto_steps, _ = _bare_fit(cfg, _Automatic, 1, None, trainer_clip=0.05)
    one, one_steps, one_hooks = _bare_fit(cfg, Classifier, 1, 0.05)
    block, block_steps, block_hooks = _bare_fit(cfg, Classifier, 4, 0.05)
    unclipped, _, _ = _bare_fit(cfg, Classifier, 1, None)

    steps = 2 * -(-400 // 16)  # two epochs of the 400 training blobs
    assert auto_steps == one_steps == block_steps == steps
    assert one_hooks == block_hooks == dict.fromkeys(_StepHooks.HOOKS, steps)
    for key, value in automatic.items():
        assert torch.equal(value, one[key]), key
        assert torch.equal(value, block[key]), key
    assert not all(torch.equal(value, unclipped[key]) for key, value in automatic.items())


def test_auto_uses_blocks_only_where_the_trainer_allows_them(compose):
    cfg = compose("experiment=mnist_mlp")
    data = instantiate(cfg.data)
    assert cfg.steps_per_call == "auto"
    assert steps_per_call(cfg, _trainer(), data) == AUTO_STEPS_PER_CALL
    assert steps_per_call(cfg, _trainer(callbacks=[_StepHooks()]), data) == AUTO_STEPS_PER_CALL  # fired per step
    assert steps_per_call(cfg, _trainer(max_steps=100), data) == 1
    assert steps_per_call(cfg, _trainer(precision="16-true"), data) == 1
    assert steps_per_call(cfg, _trainer(), object()) == 1  # a data module that is not nnlab's
    cfg.steps_per_call = 4
    assert steps_per_call(cfg, _trainer(), data) == 4
    with pytest.raises(ConfigError) as info:
        steps_per_call(cfg, _trainer(max_steps=100, precision="16-true"), data)
    assert str(info.value) == (
        "steps_per_call: 4 steps in one Lightning batch does not fit trainer.precision=16-true "
        "(blocks: 32-true, 64-true, bf16-mixed, bf16-true); max_steps=100; use steps_per_call=1 or auto"
    )


@pytest.mark.parametrize(("value", "shown"), [("0", "0"), ("fast", "'fast'"), ("2.5", "2.5")])
def test_a_bad_steps_per_call_is_one_line(value, shown):
    result = run_module("nnlab.train", "experiment=mnist_mlp", f"steps_per_call={value}", cwd=REPO, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"nnlab.train: error: config: config.steps_per_call: must be auto or a whole number >= 1, got {shown}"
    ]
