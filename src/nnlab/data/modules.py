"""The Lightning data modules: nnlab.data.tensors' data sets as LightningDataModules, which the
Trainer needs (it saves their state, the shuffled passes made, in every checkpoint)."""

from __future__ import annotations

import lightning as L

from nnlab.data.tensors import BlobsData, MNISTData


class MNISTDataModule(MNISTData, L.LightningDataModule):
    """MNIST (nnlab.data.tensors.MNISTData) for a Lightning Trainer."""


class BlobsDataModule(BlobsData, L.LightningDataModule):
    """The 2-D blobs (nnlab.data.tensors.BlobsData) for a Lightning Trainer."""
