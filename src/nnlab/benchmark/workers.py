"""What runs inside one measured process: nnlab's training command with a step timer, or the
plain PyTorch loop. Each writes one JSON file of timings; the parent measures RSS and wall time.

Timings are perf_counter and process_time stamps taken at the end of every training step.
``ms_per_step`` is the time from the end of step ``warmup`` to the end of the last step, divided
by the steps between: the steady state, data cutting, hooks and optimizer step included, warm-up
excluded. ``cpu_ms_per_step`` is the same for the CPU time of the whole process (all its
threads): on a machine that other work shares, it moves far less than the wall time.
``first_step_at`` is the wall-clock time (time.time) the first step ended, so that the parent
can tell the time from launching the process to the first step.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from contextlib import nullcontext
from pathlib import Path


def step_summary(stamps: list[float], cpu: list[float], done: list[int], warmup: int, batch_size: int) -> dict:
    """ms/step (wall and CPU) and samples/s of the steps after ``warmup`` (at least one step).
    ``done[i]``: optimizer steps finished at stamp ``i`` (a block of steps gets one stamp)."""
    count = len(stamps)
    first = next((i for i, steps in enumerate(done) if steps > warmup), count)
    first = min(first, max(count - 2, 0))
    measured = done[-1] - done[first] if count > 1 else 0
    nan = float("nan")
    seconds = stamps[-1] - stamps[first] if measured else nan
    return {
        "steps": done[-1] if done else 0,
        "warmup_steps": done[first] if done else 0,
        "measured_steps": measured,
        "ms_per_step": 1000 * seconds / measured if measured else nan,
        "cpu_ms_per_step": 1000 * (cpu[-1] - cpu[first]) / measured if measured else nan,
        "samples_per_s": batch_size * measured / seconds if measured else nan,
    }


def device_sync(device_type: str):
    """What makes a time stamp true on ``device_type``. CUDA (and MPS) run kernels after the
    Python that queued them has moved on, so a stamp waits for the device first. Only the stamps
    the timings use wait (the first step, the first past the warm-up, the last): waiting every
    step would stall the queue and charge each loop for it. Elsewhere, nothing to wait for."""
    import torch

    if device_type in ("cuda", "mps"):
        return getattr(torch, device_type).synchronize
    return lambda: None


def _timer_callback(out: Path, warmup: int):
    """A Lightning callback, built here so that importing this module imports no Lightning."""
    import lightning as L

    class _StepTimer(L.Callback):
        def __init__(self):
            self.stamps: list[float] = []
            self.cpu: list[float] = []
            self.done: list[int] = []
            self.first_step_at = self.fit_start = self.fit_start_at = self.train_end = None
            self.batch_size = 0

        def on_fit_start(self, trainer, pl_module):
            self.fit_start, self.fit_start_at = time.perf_counter(), time.time()
            self.sync = device_sync(trainer.strategy.root_device.type)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 0:
                first_measured = trainer.global_step > warmup and (not self.done or self.done[-1] <= warmup)
                if not self.stamps or first_measured or batch_idx + 1 == trainer.num_training_batches:
                    self.sync()
                self.stamps.append(time.perf_counter())
                self.cpu.append(time.process_time())
                self.done.append(trainer.global_step)  # a block of steps ends at one stamp
                if self.first_step_at is None:
                    self.first_step_at, self.batch_size = time.time(), pl_module.batch_size

        def on_validation_start(self, trainer, pl_module):
            if self.train_end is None and not trainer.sanity_checking:
                self.train_end = time.perf_counter()

        def on_fit_end(self, trainer, pl_module):
            result = step_summary(self.stamps, self.cpu, self.done, warmup, self.batch_size)
            result.update(
                first_step_at=self.first_step_at,
                fit_start_at=self.fit_start_at,
                first_step_s=self.stamps[0] - self.fit_start,  # compile time shows here
                fit_s=time.perf_counter() - self.fit_start,
                accelerator=type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
                precision=str(trainer.precision),
            )
            Path(out).write_text(json.dumps(result))

    return _StepTimer()


def run_nnlab(out: Path, warmup: int, argv: list[str]) -> None:
    """``python -m nnlab.train <argv>`` in this process, exactly as a DVC stage runs it, with one
    extra callback: the step timer. Lightning's Trainer is wrapped to receive it (the config's
    callbacks group admits Lightning's own callbacks only)."""
    import lightning as L

    timer = _timer_callback(out, warmup)
    original = L.Trainer.__init__

    def init(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*(callbacks or []), timer], **kwargs)

    L.Trainer.__init__ = init
    sys.argv = ["nnlab.train", *argv]
    runpy.run_module("nnlab.train", run_name="__main__", alter_sys=True)


# Where the self time of a profiled step goes: the first matching path fragment names the part.
PARTS = (
    ("/lightning/pytorch/loops/fetchers", "Lightning: batch fetching"),
    ("/lightning/pytorch/loops/optimization", "Lightning: optimization loop, closure"),
    ("/lightning/pytorch/loops/", "Lightning: training loop, progress"),
    ("/lightning/pytorch/trainer/call.py", "Lightning: hook dispatch"),
    ("/lightning/pytorch/core/optimizer", "Lightning: optimizer wrapper"),
    ("/lightning/pytorch/strategies/", "Lightning: strategy"),
    ("/lightning/pytorch/plugins/precision", "Lightning: precision plugin"),
    ("/lightning/pytorch/trainer/connectors/logger_connector", "Lightning: logging connector"),
    ("/lightning/", "Lightning: other"),
    ("/torch/optim/", "torch: optimizer (Python)"),
    ("/torch/", "torch: modules, autograd (Python)"),
    ("/nnlab/", "nnlab: module, metrics, batches"),
)


def part_of(filename: str) -> str:
    if filename == "~":  # a C function: torch's kernels, and builtins
        return "C: torch kernels, builtins"
    path = filename.replace("\\", "/")
    return next((label for fragment, label in PARTS if fragment in path), "other Python")


def _profile_callback(out: Path, warmup: int):
    """cProfile from step ``warmup`` to the end of the first epoch; writes, per step, the self
    time of each part (PARTS) and Lightning's ten costliest functions."""
    import cProfile
    import pstats

    import lightning as L

    class _Profile(L.Callback):
        def __init__(self):
            self.profile, self.steps = cProfile.Profile(), 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 0 and batch_idx == warmup:
                self.profile.enable()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 0 and batch_idx >= warmup:
                self.steps += 1

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch:
                return
            self.profile.disable()
            entries = pstats.Stats(self.profile).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
            parts: dict[str, float] = {}
            lightning = []
            for (filename, line, name), (_, _, tottime, _, _) in entries.items():
                per_step = 1000 * tottime / max(self.steps, 1)
                part = part_of(filename)
                parts[part] = parts.get(part, 0.0) + per_step
                if part.startswith("Lightning"):
                    where = filename.replace("\\", "/").split("/lightning/", 1)[1]
                    lightning.append((f"lightning/{where}:{line}({name})", per_step))
            lightning.sort(key=lambda item: -item[1])
            result = {
                "profiled_steps": self.steps,
                "ms_per_step": sum(parts.values()),
                "parts": dict(sorted(parts.items(), key=lambda item: -item[1])),
                "lightning_top": lightning[:10],
            }
            Path(out).write_text(json.dumps(result))

    return _Profile()


def run_profile(out: Path, warmup: int, argv: list[str]) -> None:
    """The bare Lightning run (run_lightning) under cProfile: which parts of a step cost what."""
    run_lightning(out, warmup, argv, callback=_profile_callback(out, warmup))


def _training_config(argv: list[str]):
    """The composed config with the process settings and the precision ``nnlab.train`` gives a
    run, so that every measured loop trains under the same ones."""
    from nnlab.config.compose import compose_config
    from nnlab.training import precision
    from nnlab.training.runtime import prepare_training_process

    prepare_training_process()
    cfg = compose_config(argv)
    precision.resolve(cfg.trainer)  # `auto`, as nnlab.train resolves it
    return cfg


def run_lightning(out: Path, warmup: int, argv: list[str], callback=None) -> None:
    """Lightning's own cost: nnlab's module (network, optimizer, schedule, epoch metrics) and data
    module in a Trainer with nothing else: no callbacks but the step timer, no logger,
    checkpoint, progress bar or validation, no MLflow. Against the plain loop it measures what
    Lightning's loop costs per step; against nnlab, what nnlab's structure adds to it."""
    import lightning as L
    from hydra.utils import instantiate

    from nnlab.training.fit import build_module

    cfg = _training_config(argv)
    L.seed_everything(cfg.seed, verbose=False)
    keep = ("accelerator", "devices", "precision", "deterministic", "limit_train_batches")
    trainer = L.Trainer(
        **{key: cfg.trainer[key] for key in keep},
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback or _timer_callback(out, warmup)],
    )
    trainer.fit(build_module(cfg), datamodule=instantiate(cfg.data))


def run_plain(out: Path, warmup: int, argv: list[str]) -> None:
    """The physical limit of this design: the same config's network, optimizer, schedule, loss,
    seed, batch size and tensors (MNIST scaled as the data module does), on the device Lightning
    would train on, in a minimal loop. No Lightning, no MLflow."""
    import torch

    from nnlab.training import precision

    cfg = _training_config(argv)
    kind = precision.device_type(cfg.trainer.accelerator)  # where Lightning trains nnlab's runs
    autocast = _plain_autocast(cfg.trainer.precision, kind)
    net, x, y, optimizer, scheduler, steps = _plain_parts(cfg, torch.device(kind))
    batch_size = cfg.data.batch_size
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.data.seed)).to(x.device)
    sync = device_sync(kind)
    synced = {0, min(warmup, steps - 2), steps - 1}  # the stamps step_summary uses
    net.train()
    stamps: list[float] = []
    cpu: list[float] = []
    started = time.perf_counter()
    first_step_at = None
    for step in range(steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        with autocast:  # forward and loss, as Lightning's mixed precision wraps the training step
            loss = loss_fn(net(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if step in synced:
            sync()
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
        if first_step_at is None:
            first_step_at = time.time()
    result = step_summary(stamps, cpu, list(range(1, len(stamps) + 1)), warmup, batch_size)
    result.update(
        first_step_at=first_step_at,
        first_step_s=stamps[0] - started,
        accelerator=kind,
        precision=cfg.trainer.precision,
    )
    Path(out).write_text(json.dumps(result))


def _plain_parts(cfg, device):
    """The plain loop's network, scaled inputs and labels (on ``device`` once, as nnlab's data
    module puts them), optimizer (with the implementation nnlab's module would pick there),
    schedule and number of steps, seeded as nnlab's run."""
    import numpy as np
    import torch
    from hydra.utils import instantiate

    from nnlab.data.tensors import plain_data
    from nnlab.models.module import _TOTAL_STEPS_ARGS, fast_optimizer_options
    from nnlab.models.networks import prefers_channels_last

    if cfg.trainer.deterministic and device.type == "cuda":  # as nnlab's fit sets it
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.trainer.deterministic:  # as Lightning sets it for the nnlab run
        torch.use_deterministic_algorithms(True, warn_only=cfg.trainer.deterministic == "warn")
    data = plain_data(cfg.data)
    data.setup("fit")
    x, y = data.inputs("train")  # scaled once, up front: the plain loop does no per-step scaling
    x, y = x.to(device), y.to(device)
    net = instantiate(cfg.model).to(device)
    if prefers_channels_last(net, device):  # the layout nnlab's module trains in: only the loop differs
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    factory = instantiate(cfg.optimizer)
    optimizer = factory(net.parameters(), **fast_optimizer_options(factory, device))
    steps = -(-len(y) // cfg.data.batch_size)
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, int) and limit > 0:
        steps = min(steps, limit)
    scheduler = None
    if cfg.get("scheduler"):
        factory = instantiate(cfg.scheduler)
        keywords = getattr(factory, "keywords", {})
        extra = {k: max(steps, 10) for k in _TOTAL_STEPS_ARGS if k in keywords and keywords[k] is None}
        scheduler = factory(optimizer, **extra)
    return net, x, y, optimizer, scheduler, steps


def _plain_autocast(precision: str, device_type: str):
    """The plain loop's counterpart of the trainer's precision (the two it can match)."""
    import torch

    if precision == "32-true":
        return nullcontext()
    if precision == "bf16-mixed":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    raise RuntimeError(f"the plain loop runs trainer.precision 32-true or bf16-mixed, not {precision!r}")


# The measured processes, by the name ``nnlab.bench --worker`` takes.
WORKERS = {"plain": run_plain, "lightning": run_lightning, "nnlab": run_nnlab, "profile": run_profile}
