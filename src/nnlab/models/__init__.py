"""Networks (plain nn.Module), the one LightningModule that trains them, the NumPy network,
their summaries and checkpoints. They know nothing of DVC or MLflow."""
