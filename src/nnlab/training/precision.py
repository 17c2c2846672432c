"""``trainer.precision: auto``: bf16 mixed precision where the device computes bf16 natively,
full float32 elsewhere.

Where bf16 is native (a CUDA GPU from Ampere on; a CPU with AVX512-BF16 or AMX) the CNN trains
faster in it with the same accuracy; where it is not, torch emulates it and the same training is
several times slower (reports/bench.md), so a fixed bf16-mixed would be a trap on most laptops. The choice is made once, before the Trainer is built, and the
run's config records the precision it used, not "auto".
"""

from __future__ import annotations

from omegaconf import DictConfig

AUTO = "auto"
BF16_MIXED = "bf16-mixed"
FULL = "32-true"
# torch.cpu's checks of the CPU's instruction sets (private, so looked up by name: a torch without
# one counts as a CPU without it).
CPU_BF16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def device_type(accelerator: str) -> str:
    """The kind of device Lightning will train on for ``trainer.accelerator``."""
    import torch

    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator != AUTO:
        return accelerator
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def native_bf16(device: str) -> bool:
    """Whether ``device`` ("cuda", "cpu", "mps") has bf16 arithmetic of its own."""
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device == "cpu":
        return any(getattr(torch.cpu, name, lambda: False)() for name in CPU_BF16_CHECKS)
    return False  # MPS: bf16 is not faster there than float32


FP16_MIXED = ("16-mixed", "16", 16)  # Lightning trains these in bf16-mixed on the CPU, with a warning


def check_device(trainer: DictConfig) -> str:
    """The device ``trainer`` trains on, refused in one line when this machine lacks it (Lightning
    and Hydra would say it in five) or when Lightning would silently train in another precision
    than the one the run records. Returns the device type."""
    import torch

    from nnlab.config.schema import ConfigError

    device = device_type(trainer.accelerator)
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator: {trainer.accelerator} needs a CUDA GPU and torch finds none on this machine; "
            "use trainer=auto (the best device present) or trainer=cpu"
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator: mps needs Apple's Metal GPU, absent here; use trainer=auto or cpu")
    if device == "cpu" and trainer.precision in FP16_MIXED:
        raise ConfigError(
            f"trainer.precision: {trainer.precision} needs a GPU (on the CPU Lightning would train in bf16-mixed "
            "while the run records 16-mixed); use 32-true, bf16-mixed or auto"
        )
    return device


def resolve(trainer: DictConfig) -> str:
    """Replace ``precision: auto`` in the trainer config by the precision it means here; returns
    the precision the run uses."""
    if trainer.precision == AUTO:
        trainer.precision = BF16_MIXED if native_bf16(device_type(trainer.accelerator)) else FULL
    return trainer.precision
