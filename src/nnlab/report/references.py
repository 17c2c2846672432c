"""The reference experiments E1-E6: what each is, and the figures its text published."""

from __future__ import annotations

# id: (what it is, published test accuracy or None when the text gives no figure)
REFERENCES: dict[str, tuple[str, float | None]] = {
    "E1": ("MLP 784-128-64-10 ReLU, SGD lr 0.1, batch 64, 5 epochs", None),
    "E2": ("MLP 784-128-64-10 ReLU, Adam, batch 64, 10 epochs", 0.9692),
    "E3": ("CNN conv32-conv64-fc128, Adam, batch 64, 10 epochs", 0.9868),
    "E4": ("NumPy MLP 784-128-64-10 sigmoid, per-sample SGD", 0.95),
    "E5": ("blobs, linear 2-3, full-batch SGD lr 0.01, 1000 epochs (validation accuracy)", 1.0),
    "E6": ("MLP 784-512-10 ReLU, RMSprop, batch 128, 5 epochs (commonly ~98 %)", None),
}


def published_accuracy(ref: str | None) -> float | None:
    return REFERENCES.get(ref, ("", None))[1] if ref else None


# id: the experiment (conf/experiment/) that runs the text's own recipe, in the reference
# pipeline (reference/dvc.yaml): the like-for-like row beside each published figure.
PUBLISHED_RECIPES: dict[str, str] = {
    "E1": "ref_e1_mlp_sgd",
    "E2": "ref_e2_mlp_adam",
    "E3": "ref_e3_cnn",
    "E4": "ref_e4_numpy_mlp",
    "E5": "ref_e5_blobs_linear",
    "E6": "ref_e6_mlp512_rmsprop",
}


def like_for_like(ref: str | None) -> str | None:
    return PUBLISHED_RECIPES.get(ref) if ref else None


# Per-epoch training loss the texts printed: {epoch: loss}.
PUBLISHED_LOSSES: dict[str, dict[int, float]] = {
    "E2": {1: 0.3866, 10: 0.0522},
    "E3": {1: 0.2493, 10: 0.0350},
    "E5": {100: 0.5763, 1000: 0.0986},
}
