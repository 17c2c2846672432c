"""MNIST: obtained from one of several sources and written in one canonical form.

Canonical form under ``out_dir``: the four original IDX files in ``raw/`` (md5-checked),
``split.npz`` with the train/validation indices into the 60,000 training images, and
``manifest.json``. Every later stage reads these bytes, whichever source produced them.
One module per job: sources (fetching), checks (the fetched bytes, params.yaml), canonical
(writing), reading (loading).
"""

from nnlab.data.mnist.canonical import prepare, split_indices
from nnlab.data.mnist.checks import N_TRAIN, MnistParams, verify
from nnlab.data.mnist.reading import load, load_split
from nnlab.data.mnist.sources import SOURCES, fetch, from_dir, from_pypi, from_torchvision

__all__ = [
    "N_TRAIN",
    "SOURCES",
    "MnistParams",
    "fetch",
    "from_dir",
    "from_pypi",
    "from_torchvision",
    "load",
    "load_split",
    "prepare",
    "split_indices",
    "verify",
]
