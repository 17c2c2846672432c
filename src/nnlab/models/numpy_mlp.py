"""Reference experiment E4: a sigmoid MLP written from scratch in NumPy (no autograd).

Sigmoid hidden layers, a softmax output and the mean cross-entropy over the batch,
trained by hand-written backpropagation and plain SGD (per-sample or mini-batch).
"""

from __future__ import annotations

import math

import numpy as np

from nnlab.models.activations import sigmoid as _sigmoid
from nnlab.models.activations import softmax as _softmax

INITS = ("xavier", "normal", "uniform")


def _weight_grad(a: np.ndarray, delta: np.ndarray) -> np.ndarray:
    # For one sample a broadcast outer product is about twice as fast as OpenBLAS gemm with k=1.
    return a.T * delta if len(a) == 1 else a.T @ delta


def _init_weight(rng: np.random.Generator, fan_in: int, fan_out: int, init: str) -> np.ndarray:
    if init == "xavier":
        return rng.normal(0.0, math.sqrt(1.0 / fan_in), size=(fan_in, fan_out))
    if init == "normal":
        return rng.normal(0.0, 1.0, size=(fan_in, fan_out))
    return rng.uniform(-0.5, 0.5, size=(fan_in, fan_out))


class NumpyMLP:
    """Fully connected sigmoid network with a softmax output; weights are (fan_in, fan_out).

    Biases start at zero whatever ``init`` is; ``init`` only chooses the weight distribution.
    """

    def __init__(self, input_shape=(1, 28, 28), num_classes=10, hidden_sizes=(128, 64), init="xavier", seed=0):
        if init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        rng = np.random.default_rng(seed)
        sizes = [math.prod(self.input_shape), *hidden_sizes, num_classes]
        self.weights = [_init_weight(rng, a, b, init) for a, b in zip(sizes[:-1], sizes[1:])]
        self.biases = [np.zeros(b) for b in sizes[1:]]

    def _flatten(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64).reshape(len(x), -1)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Class probabilities and the cache (the input of every layer) for ``backward``."""
        a = self._flatten(x)
        cache = [a]
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            a = _sigmoid(a @ w + b)
            cache.append(a)
        probs = _softmax(a @ self.weights[-1] + self.biases[-1])
        return probs, cache + [probs]

    def loss(self, probs: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy of integer labels ``y``."""
        picked = probs[np.arange(len(y)), y]
        return float(-np.log(np.maximum(picked, np.finfo(np.float64).tiny)).mean())

    def backward(self, cache: list[np.ndarray], y: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Gradients of the mean cross-entropy with respect to every weight and bias."""
        return self._gradients(cache, np.asarray(y), 1.0)

    def _gradients(self, cache: list[np.ndarray], y: np.ndarray, scale: float) -> tuple[list, list]:
        # sgd_step passes scale=lr so the big weight gradients need no extra multiply pass.
        *inputs, probs = cache
        delta = probs.copy()
        delta[np.arange(len(y)), y] -= 1.0
        delta *= scale / len(y)
        grad_w, grad_b = [], []
        for layer in range(len(self.weights) - 1, -1, -1):
            a = inputs[layer]
            grad_w.append(_weight_grad(a, delta))
            grad_b.append(delta.sum(axis=0))
            if layer > 0:
                delta = (delta @ self.weights[layer].T) * a * (1.0 - a)
        return grad_w[::-1], grad_b[::-1]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x).argmax(axis=1)

    def _step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, np.ndarray]:
        probs, cache = self.forward(x)
        steps_w, steps_b = self._gradients(cache, y, lr)
        for param, step in zip(self.weights + self.biases, steps_w + steps_b):
            param -= step
        return self.loss(probs, y), probs

    def sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One SGD update on a batch; returns the loss before the update."""
        return self._step(x, np.asarray(y), lr)[0]

    def fit_epoch(
        self,
        x: np.ndarray,
        y: np.ndarray,
        lr: float,
        batch_size: int = 1,
        rng: np.random.Generator | None = None,
    ) -> dict[str, float]:
        """One pass over shuffled data; batch_size=1 is per-sample SGD.

        train_loss and train_acc are measured on each batch before its update.
        """
        rng = rng if rng is not None else np.random.default_rng()
        x = np.asarray(x).reshape(len(x), -1)
        y = np.asarray(y, dtype=np.int64)
        order = rng.permutation(len(x))
        total_loss, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            yb = y[idx]
            loss, probs = self._step(x[idx], yb, lr)
            total_loss += loss * len(idx)
            correct += int((probs.argmax(axis=1) == yb).sum())
        return {"train_loss": total_loss / len(x), "train_acc": correct / len(x)}

    def gradient_norms(self, x: np.ndarray, y: np.ndarray) -> list[float]:
        """L2 norm of each layer's weight gradient, first layer first."""
        grad_w, _ = self.backward(self.forward(x)[1], np.asarray(y))
        return [float(np.linalg.norm(g)) for g in grad_w]

    def parameter_count(self) -> int:
        return sum(w.size + b.size for w, b in zip(self.weights, self.biases))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters as w0, b0, w1, b1, ... (ready for numpy.savez)."""
        state = {f"w{i}": w.copy() for i, w in enumerate(self.weights)}
        state.update({f"b{i}": b.copy() for i, b in enumerate(self.biases)})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Load parameters saved by ``state_dict``; shapes must match this network."""
        for name, params in (("w", self.weights), ("b", self.biases)):
            for i, old in enumerate(params):
                new = np.asarray(state[f"{name}{i}"], dtype=np.float64)
                if new.shape != old.shape:
                    raise ValueError(f"{name}{i}: expected shape {old.shape}, got {new.shape}")
                params[i] = new.copy()
