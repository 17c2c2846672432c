"""The speed benchmark behind ``python -m nnlab.bench``: nnlab's real training command against a
plain PyTorch loop on the same tensors, start-up of every stage command, and ``dvc repro`` of a
small configuration. Every measurement runs in its own process (``workers``), the suite
interleaves the repetitions (``suite``), and ``report`` writes reports/bench.json and bench.md."""
