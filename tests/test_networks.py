import pytest
import torch

from nnlab.models.networks import CNN, MLP, LinearClassifier, count_parameters


@pytest.mark.parametrize(
    ("net", "shape", "params"),
    [
        (LinearClassifier(), (5, 1, 28, 28), 7_850),
        (LinearClassifier((2,), 3), (5, 2), 9),
        (MLP(), (5, 1, 28, 28), 109_386),  # 784-128-64-10
        (MLP(hidden_sizes=[512]), (5, 1, 28, 28), 407_050),  # E6: 784-512-10
        (CNN(), (5, 1, 28, 28), 421_642),  # E3, as published
    ],
)
def test_output_shape_and_parameter_count(net, shape, params):
    out = net(torch.randn(*shape))
    assert out.shape == (shape[0], 3 if shape[-1] == 2 else 10)
    assert count_parameters(net) == params


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_mlp_activation_and_dropout_layers(activation):
    net = MLP(hidden_sizes=[32, 16], activation=activation, dropout=0.2)
    kinds = [type(m).__name__.lower() for m in net.net]
    assert kinds.count(activation) == 2
    assert kinds.count("dropout") == 2


def test_mlp_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation must be one of"):
        MLP(activation="swish")


def test_cnn_on_other_input_sizes():
    net = CNN(input_shape=(3, 32, 32), num_classes=4, channels=[8, 16], hidden_size=32)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 4)
