"""E4: the from-scratch NumPy MLP, checked against PyTorch autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnlab.models.numpy_mlp import NumpyMLP


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-12)).max())


def torch_reference(model: NumpyMLP, x: np.ndarray, y: np.ndarray):
    """Loss and autograd gradients of the same network in torch.float64."""
    weights = [torch.tensor(w, requires_grad=True) for w in model.weights]
    biases = [torch.tensor(b, requires_grad=True) for b in model.biases]
    a = torch.tensor(x.reshape(len(x), -1), dtype=torch.float64)
    for w, b in zip(weights[:-1], biases[:-1]):
        a = torch.sigmoid(a @ w + b)
    loss = F.cross_entropy(a @ weights[-1] + biases[-1], torch.tensor(y))
    loss.backward()
    return loss.item(), [w.grad.numpy() for w in weights], [b.grad.numpy() for b in biases]


def small_problem(n: int = 16, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 20)), rng.integers(0, 4, size=n)


def blobs(n: int = 200, seed: int = 0):
    """Three well separated Gaussian blobs in 10-d."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(3, 10))
    y = np.arange(n) % 3
    return centers[y] + rng.normal(scale=0.5, size=(n, 10)), y


def random_images(n: int = 40):
    rng = np.random.default_rng(5)
    return rng.random((n, 1, 28, 28)), rng.integers(0, 10, size=n)


@pytest.mark.parametrize("n", [1, 16])
@pytest.mark.parametrize("init", ["xavier", "uniform"])
def test_gradients_match_torch_autograd(n, init):
    model = NumpyMLP(input_shape=(20,), num_classes=4, hidden_sizes=(7, 5), init=init, seed=3)
    x, y = small_problem(n)
    _, ref_w, ref_b = torch_reference(model, x, y)
    grad_w, grad_b = model.backward(model.forward(x)[1], y)
    assert [g.shape for g in grad_w] == [w.shape for w in model.weights]
    for ours, ref in zip(grad_w + grad_b, ref_w + ref_b):
        assert relative_error(ours, ref) < 1e-7


def test_loss_matches_torch_cross_entropy():
    model = NumpyMLP(input_shape=(20,), num_classes=4, hidden_sizes=(7, 5), seed=3)
    x, y = small_problem()
    probs, _ = model.forward(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    assert model.loss(probs, y) == pytest.approx(torch_reference(model, x, y)[0], rel=1e-12)


def test_sgd_step_is_one_gradient_descent_update():
    model = NumpyMLP(input_shape=(20,), num_classes=4, hidden_sizes=(7, 5), seed=3)
    x, y = small_problem()
    probs, cache = model.forward(x)
    grad_w, grad_b = model.backward(cache, y)
    before = [p.copy() for p in model.weights + model.biases]
    assert model.sgd_step(x, y, 0.1) == pytest.approx(model.loss(probs, y), rel=1e-12)
    for old, new, grad in zip(before, model.weights + model.biases, grad_w + grad_b):
        np.testing.assert_allclose(new, old - 0.1 * grad, rtol=1e-12, atol=1e-15)
    assert model.loss(model.predict_proba(x), y) < model.loss(probs, y)


def test_per_sample_sgd_learns_separable_blobs():
    x, y = blobs()
    model = NumpyMLP(input_shape=(10,), num_classes=3, hidden_sizes=(16,), seed=0)
    initial = model.loss(model.predict_proba(x), y)
    rng = np.random.default_rng(0)
    for _ in range(2):  # 400 per-sample steps
        stats = model.fit_epoch(x, y, lr=0.1, batch_size=1, rng=rng)
    final = model.loss(model.predict_proba(x), y)
    assert final < 0.5 * initial
    assert (model.predict(x) == y).mean() >= 0.98
    assert stats["train_acc"] >= 0.9
    assert 0 < stats["train_loss"] < initial


def test_mini_batch_sgd_learns_separable_blobs():
    x, y = blobs()
    model = NumpyMLP(input_shape=(10,), num_classes=3, hidden_sizes=(16,), seed=0)
    initial = model.loss(model.predict_proba(x), y)
    rng = np.random.default_rng(0)
    for _ in range(30):
        stats = model.fit_epoch(x, y, lr=0.5, batch_size=16, rng=rng)
    assert set(stats) == {"train_loss", "train_acc"}
    assert model.loss(model.predict_proba(x), y) < 0.5 * initial
    assert (model.predict(x) == y).mean() >= 0.98


def test_gradient_norms_one_positive_float_per_layer():
    model = NumpyMLP(input_shape=(20,), num_classes=4, hidden_sizes=(7, 5), seed=3)
    norms = model.gradient_norms(*small_problem())
    assert len(norms) == 3
    assert all(isinstance(v, float) and v > 0 for v in norms)


def test_naive_normal_init_shows_vanishing_gradients_in_deep_sigmoid_stack():
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 1, 28, 28)), rng.integers(0, 10, size=64)
    model = NumpyMLP(hidden_sizes=(64, 64, 64, 64), init="normal", seed=0)
    norms = model.gradient_norms(x, y)
    assert len(norms) == 5
    # 0.28 for this seed; over seeds 0-49 the ratio stays between 0.22 and 0.53.
    assert norms[0] < 0.5 * norms[-1]


def test_invalid_init_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"xavier.*normal.*uniform"):
        NumpyMLP(init="he")


@pytest.mark.parametrize(
    ("init", "check"),
    [
        ("xavier", lambda w: abs(w.std() - np.sqrt(1 / 784)) < 0.002),
        ("normal", lambda w: abs(w.std() - 1.0) < 0.02),
        ("uniform", lambda w: w.min() >= -0.5 and w.max() <= 0.5 and abs(w.std() - np.sqrt(1 / 12)) < 0.01),
    ],
)
def test_init_distributions(init, check):
    model = NumpyMLP(init=init)
    assert all(w.dtype == np.float64 for w in model.weights)
    assert check(model.weights[0])


def test_state_dict_round_trip_through_savez(tmp_path):
    model = NumpyMLP(hidden_sizes=(16, 8), seed=1)
    model.fit_epoch(*random_images(), lr=0.1, batch_size=8, rng=np.random.default_rng(0))
    np.savez(tmp_path / "e4.npz", **model.state_dict())
    other = NumpyMLP(hidden_sizes=(16, 8), seed=2)
    with np.load(tmp_path / "e4.npz") as saved:
        assert sorted(saved.files) == ["b0", "b1", "b2", "w0", "w1", "w2"]
        other.load_state_dict(dict(saved))
    x, _ = random_images()
    np.testing.assert_array_equal(other.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(other.predict(x), model.predict(x))


def test_load_state_dict_rejects_wrong_shapes():
    state = NumpyMLP(hidden_sizes=(16, 8)).state_dict()
    with pytest.raises(ValueError, match="w0"):
        NumpyMLP(hidden_sizes=(32, 8)).load_state_dict(state)


def test_parameter_count_e4_architecture():
    model = NumpyMLP(input_shape=(784,), num_classes=10, hidden_sizes=(128, 64))
    assert model.parameter_count() == 109_386
    assert NumpyMLP().parameter_count() == 109_386  # (1, 28, 28) is flattened to 784
    assert NumpyMLP().predict(np.zeros((3, 1, 28, 28), dtype=np.uint8)).shape == (3,)
