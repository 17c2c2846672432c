"""Networks (plain nn.Module) and the one LightningModule that trains any of them."""

from nnlab.models.networks import CNN, MLP, LinearClassifier, count_parameters

__all__ = ["CNN", "MLP", "LinearClassifier", "count_parameters"]
