"""nnlab: train, sweep, track and compare neural-network classifiers."""

__version__ = "0.1.0"
