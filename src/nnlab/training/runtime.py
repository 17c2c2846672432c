"""Process settings a training run makes before it starts: two per-step costs that are neither
the model's nor nnlab's, removed. The values computed are untouched (reports/bench.md has the
figures).

**The allocator.** glibc's malloc serves a block above its mmap threshold (128 KiB at start, raised as large blocks
are freed) with a fresh mmap, and returns the top of the heap to the kernel once more than the
trim threshold is free. A training step allocates and frees the same large tensors every time
(a CNN batch's activations are 13 MB each), so without this every step maps new pages and takes
a page fault per 4 KiB of them: a large share of a CNN step on the CPU went to page faults, and a
process's speed depended on how far its earlier allocations had happened to raise the threshold. With a fixed threshold of 32 MiB (glibc's largest) and no trimming, the freed blocks
are reused; the process keeps its peak working set, which it reaches every step anyway.

**CUDA probing.** Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when it is imported, so that
``torch.cuda.is_available()`` asks NVML instead of initialising CUDA; torch does not cache that
answer before CUDA is initialised, and its optimizers ask it in every ``step()`` (a dlopen of the
NVML library that fails, a visible share of a small MLP's step). Where there is no CUDA device, an
empty CUDA_VISIBLE_DEVICES answers at once.
"""

from __future__ import annotations

import ctypes
import os
import sys

from omegaconf import DictConfig

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum (on 64-bit)
TRIM_THRESHOLD = 1024 * 1024 * 1024


def reuse_freed_memory() -> bool:
    """Set the two thresholds; True if this is glibc and it took them (elsewhere nothing changes:
    macOS, Windows and musl have allocators of their own)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def stop_cuda_probing() -> bool:
    """CUDA_VISIBLE_DEVICES="" when no CUDA device is usable (True if set); a machine with one,
    or a CUDA_VISIBLE_DEVICES chosen by the user, is left as it is."""
    import torch

    if "CUDA_VISIBLE_DEVICES" in os.environ or torch.cuda.is_available():
        return False
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return True


def prepare_training_process() -> None:
    reuse_freed_memory()
    stop_cuda_probing()


def prepare_run(cfg: DictConfig, overrides: list[str] | None) -> list[str]:
    """Everything a training settles before it builds anything, in one step: the process (above),
    the config checked, ``auto`` precision resolved to what it means on this machine (recorded as
    such), credentials moved out of the tracking URI and the overrides into the environment (never
    into a file), and the seed. Returns the overrides as they may be recorded."""
    import lightning as L

    from nnlab.config.paths import register_resolvers
    from nnlab.config.schema import validate
    from nnlab.tracking.credentials import credentials_to_environment, override_credentials_to_environment
    from nnlab.training import precision
    from nnlab.training.numpy_loop import refuse_unused_choices

    prepare_training_process()
    register_resolvers()  # ${nnlab_root:} also in a launcher's worker process
    validate(cfg)
    refuse_unused_choices(cfg)  # the NumPy network's run records only what it uses
    precision.check_device(cfg.trainer)  # a GPU that is absent, fp16 that the CPU would train in bf16
    precision.resolve(cfg.trainer)
    if cfg.logger.get("mlflow"):
        cfg.logger.mlflow.tracking_uri = credentials_to_environment(cfg.logger.mlflow.tracking_uri)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return [override_credentials_to_environment(o) for o in overrides or []]
