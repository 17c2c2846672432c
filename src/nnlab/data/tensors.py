"""Prepared data sets held as tensors in memory and batched by index, without Lightning.

No per-sample transforms and no per-sample collate: a batch is one fancy-indexing of a
tensor, which keeps a small MLP epoch close to a plain PyTorch loop. nnlab.data.modules makes
them Lightning data modules for training; evaluation uses them as they are (``plain_data``), so
that the evaluate stage does not spend seconds importing Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nnlab.config.schema import is_int
from nnlab.data import blobs, mnist
from nnlab.data.idx import DataError


def random_shift(x: torch.Tensor, max_shift: int, fill: float, gen: torch.Generator) -> torch.Tensor:
    """Each image of a (n, c, h, w) batch moved by its own random offset of up to ``max_shift``
    pixels in each direction, the uncovered border filled with ``fill``; one gather, no loop."""
    n, c, h, w = x.shape
    device = x.device  # the offsets come from the CPU generator: the same on every device
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, value=fill)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1, 1), generator=gen).to(device)
    rows = torch.arange(h, device=device).view(1, h, 1) + dy
    cols = torch.arange(w, device=device).view(1, 1, w) + dx
    batch = torch.arange(n, device=device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


class TensorBatches:
    """Mini-batches of (x, y) by index; reshuffled each pass with a seeded generator.

    ``rank``/``world_size`` give each DDP process its own equal-sized share. ``scale`` turns the
    stored form of a batch into the model's inputs (MNIST's pixels are kept as bytes: a quarter of
    the memory). ``shift`` > 0 moves each training image by up to that many pixels (augmentation),
    ``fill`` is the background. ``per_call`` > 1 yields blocks: the next ``per_call`` shuffled
    batches as one (x, y), batch after batch (Classifier steps through it a batch at a time); the
    same samples, values and random shifts as the batches one by one. ``limit`` stops a pass
    after that many batches (an int) or that share of them (a float), as Lightning's
    ``limit_train_batches`` would count them one by one.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shift: int = 0,
        fill: float = 0.0,
        scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
        per_call: int = 1,
        limit: int | float | None = None,
    ):
        self.x, self.y = x, y
        self.per_call, self.limit = per_call, limit
        self.scale = scale or (lambda x: x)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.shift, self.fill = shift, fill
        self.passes = 0

    def _indices(self) -> torch.Tensor:
        n = len(self.y)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.passes)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        per_rank = n // self.world_size if self.world_size > 1 else n
        return order[self.rank :: self.world_size][:per_rank]

    @property
    def steps(self) -> int:
        """Mini-batches (optimizer steps) per pass."""
        per_rank = len(self.y) // self.world_size if self.world_size > 1 else len(self.y)
        steps = -(-per_rank // self.batch_size)
        if isinstance(self.limit, float):
            return int(steps * self.limit)
        return steps if self.limit is None else min(steps, self.limit)

    def __len__(self) -> int:
        return -(-self.steps // self.per_call)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices().to(self.x.device)  # the order is drawn on the CPU, batches cut where x is
        self.passes += 1
        if not self.shuffle and self.world_size == 1:  # contiguous slices
            for start in range(0, len(order), self.batch_size):
                yield self.scale(self.x[start : start + self.batch_size]), self.y[start : start + self.batch_size]
            return
        gen = torch.Generator().manual_seed(self.seed + 7919 * self.passes)
        size, end = self.batch_size * self.per_call, min(len(order), self.steps * self.batch_size)
        for start in range(0, end, size):
            batch = order[start : min(start + size, end)]
            # index_select, not self.x[batch]: the same copy, several times faster on the CPU
            x = self.scale(self.x.index_select(0, batch))
            if self.shift:  # batch by batch: each draws its offsets as it would on its own
                x = torch.cat([random_shift(part, self.shift, self.fill, gen) for part in x.split(self.batch_size)])
            yield x, self.y.index_select(0, batch)


class TensorData:
    """Base: subclasses implement ``load()`` returning inputs and int labels per split; ``splits``
    holds them in their stored form (``to_inputs``), ``scale`` makes a batch of them the model's
    inputs and ``inputs(split)`` a whole split.
    The Lightning data modules (nnlab.data.modules) add LightningDataModule, which sets
    ``trainer`` while one trains: batches then go to its device and its process's share."""

    def __init__(
        self,
        data_dir: str,
        input_shape: Sequence[int],
        num_classes: int,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        seed: int = 0,
        shift: int = 0,
    ):
        self.trainer = None
        super().__init__()  # LightningDataModule's, in a Lightning data module
        self.shift = shift
        self.data_dir = Path(data_dir)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.raw_test_inputs: np.ndarray | None = None  # as stored (MNIST: uint8 pixels), for plots
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._train_passes = 0
        self.steps_per_call = 1  # training batches per block (set by nnlab.training.fit),
        self.train_limit: int | float | None = None  # and the trainer's limit_train_batches for blocks

    def load(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def to_inputs(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x, dtype=np.float32))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Stored inputs (any number of them) as the model takes them."""
        return x

    def inputs(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole split as the model takes it (x scaled, y)."""
        x, y = self.splits[split]
        return self.scale(x), y

    def needed_input_shape(self, x: np.ndarray) -> list[int]:
        """The data.input_shape that fits the stored inputs ``x`` (n, ...)."""
        return [int(d) for d in x.shape[1:]]

    def check_data(self, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """data.num_classes and data.input_shape against the loaded data; a one-line DataError
        naming the key and the value the data needs when they do not fit: a label >= num_classes,
        or an input_shape whose size differs from that of a stored sample."""
        where = self.data_dir
        labels = [np.asarray(y) for _, y in data.values() if np.asarray(y).size]
        lo = min((int(y.min()) for y in labels), default=0)
        hi = max((int(y.max()) for y in labels), default=0)
        needed = max(hi + 1, 2)
        n = self.num_classes
        if not is_int(n) or n < 2:
            raise DataError(
                f"data.num_classes: must be an integer >= 2, got {n!r}; "
                f"the data in {where} needs data.num_classes={needed}"
            )
        if n < needed:  # more outputs than classes is allowed (a data set with fewer classes)
            raise DataError(
                f"data.num_classes={n} does not match the data: the labels in {where} are "
                f"{lo}-{hi}, so set data.num_classes={needed}"
            )
        x = np.asarray(data["train"][0])
        per_sample = math.prod(x.shape[1:])
        want = self.needed_input_shape(x)
        shape = list(self.input_shape)
        if not shape or not all(is_int(d) and d > 0 for d in shape):
            raise DataError(
                f"data.input_shape: must be a list of positive integers, got {shape}; "
                f"the data in {where} needs data.input_shape={want}"
            )
        if math.prod(shape) != per_sample:
            raise DataError(
                f"data.input_shape={shape} ({math.prod(shape)} values per sample) does not match "
                f"the data: each sample in {where} has {per_sample} values "
                f"({'x'.join(map(str, x.shape[1:]))}), so set data.input_shape={want}"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = self.load()
        self.check_data(data)
        self.raw_test_inputs = data["test"][0]
        for split, (x, y) in data.items():
            inputs = self.to_inputs(x).reshape(-1, *self.input_shape)
            if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
                # values a loader read as float64 can overflow the float32 the model takes
                raise DataError(
                    f"{self.data_dir}: the {split} split holds values that are not finite as {inputs.dtype} "
                    "(NaN, infinite, or too large for that type); the data is at fault, not the training"
                )
            self.splits[split] = (inputs, torch.from_numpy(np.asarray(y, dtype=np.int64)))

    def on_device(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The split on the trainer's device: copied there once (on a GPU, no host-to-device copy
        per step; batches are cut on the device). On the CPU the tensors themselves."""
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        if device.type == "cpu":
            return self.splits[split]
        if split not in self._on_device or self._on_device[split][0].device != device:
            x, y = self.splits[split]
            self._on_device[split] = (x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        return self._on_device[split]

    def _batches(self, split: str, train: bool = False) -> TensorBatches:
        x, y = self.on_device(split)
        if not train:
            return TensorBatches(x, y, self.eval_batch_size, scale=self.scale)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        batches = TensorBatches(
            x,
            y,
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            rank=rank,
            world_size=world,
            shift=self.shift,
            fill=self.background,
            scale=self.scale,
            per_call=self.steps_per_call,
            limit=self.train_limit,
        )
        batches.passes = self._train_passes  # a resumed run continues the saved batch order
        self._train_batches = batches
        return batches

    def state_dict(self) -> dict:
        """Saved in every checkpoint: how many shuffled passes the training batches have made."""
        batches = getattr(self, "_train_batches", None)
        return {"train_passes": batches.passes if batches else self._train_passes}

    def load_state_dict(self, state: dict) -> None:
        self._train_passes = int(state.get("train_passes", 0))

    @property
    def background(self) -> float:
        """The value of a blank input pixel after scaling."""
        return 0.0

    def train_dataloader(self) -> TensorBatches:
        return self._batches("train", train=True)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val")

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test")


class MNISTData(TensorData):
    """MNIST from the canonical form: pixels scaled to [0, 1], then (x - mean) / std."""

    def __init__(self, *args, mean: float = 0.1307, std: float = 0.3081, **kwargs):
        super().__init__(*args, **kwargs)
        self.mean, self.std = mean, std

    def load(self):
        return mnist.load(self.data_dir)

    @property
    def background(self) -> float:
        return -self.mean / self.std

    def needed_input_shape(self, x: np.ndarray) -> list[int]:
        return [1, *(int(d) for d in x.shape[1:])]  # one channel

    def to_inputs(self, x: np.ndarray) -> torch.Tensor:
        # The pixels stay bytes (55,000 training images: 43 MB instead of 172 MB as floats); each
        # batch is scaled when it is cut, with the same operations, so to the same values.
        return torch.from_numpy(np.asarray(x, dtype=np.uint8))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        # in place: one float copy of the pixels, not three
        return x.float().div_(255.0).sub_(self.mean).div_(self.std)


class BlobsData(TensorData):
    """The standardised 2-D blobs; its validation split doubles as the test split."""

    def load(self):
        return blobs.load(self.data_dir)


# The Lightning data modules' plain counterparts.
PLAIN = {
    "nnlab.data.modules.MNISTDataModule": "nnlab.data.tensors.MNISTData",
    "nnlab.data.modules.BlobsDataModule": "nnlab.data.tensors.BlobsData",
}


def plain_data(data_cfg: DictConfig) -> TensorData:
    """The config's data as a plain TensorData when it names one of nnlab's data modules (any
    other ``_target_``, a user's own, is built as configured)."""
    target = PLAIN.get(data_cfg._target_, data_cfg._target_)
    return instantiate(OmegaConf.merge(data_cfg, {"_target_": target}))
