"""Activation functions and their derivatives, in NumPy: used by the NumPy network (E4) and
plotted on the teaching page, so both show the same definitions."""

from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    # exp(-z) overflows to inf for very negative z, and 1 / inf = 0 is the right answer.
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def sigmoid_derivative(z: np.ndarray) -> np.ndarray:
    s = sigmoid(z)
    return s * (1.0 - s)


def tanh(z: np.ndarray) -> np.ndarray:
    return np.tanh(z)


def tanh_derivative(z: np.ndarray) -> np.ndarray:
    return 1.0 - np.tanh(z) ** 2


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def relu_derivative(z: np.ndarray) -> np.ndarray:
    return (z > 0).astype(float)


def identity(z: np.ndarray) -> np.ndarray:
    return np.asarray(z, dtype=float)


def identity_derivative(z: np.ndarray) -> np.ndarray:
    return np.ones_like(z, dtype=float)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, k) scores, shifted by the row maximum so exp never overflows."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_jacobian(z: np.ndarray) -> np.ndarray:
    """d softmax_i / d z_j for one score vector z of length k: diag(p) - p pᵀ."""
    p = softmax(np.asarray(z, dtype=float)[None, :])[0]
    return np.diag(p) - np.outer(p, p)


ELEMENTWISE = {
    "sigmoid": (sigmoid, sigmoid_derivative),
    "tanh": (tanh, tanh_derivative),
    "relu": (relu, relu_derivative),
    "identity": (identity, identity_derivative),
}
