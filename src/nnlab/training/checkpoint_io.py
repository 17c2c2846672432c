"""Checkpoint files written whole or not at all."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but a local checkpoint goes to a temporary file beside its
    target and is renamed into place. Lightning's own writer copies a temporary file from the
    system's temporary folder: on a full disk the copy stops part way and leaves a truncated
    best.ckpt that a later step could take for a result. Here a failed write leaves nothing."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):  # Lightning's own answer for these
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        contents = io.BytesIO()  # serialised first: torch's own file writer reports a full disk as
        torch.save(checkpoint, contents)  # "iostream error", Python's as ENOSPC naming the file
        try:
            with partial.open("wb") as handle:
                handle.write(contents.getbuffer())
            os.replace(partial, target)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(target)) from None
        finally:
            partial.unlink(missing_ok=True)
