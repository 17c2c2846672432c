import copy

import pytest
import torch

from nnlab.models.module import Classifier, RunningAccuracy, RunningMean
from nnlab.models.networks import CNN, INFERENCE_PIECE, MLP, LinearClassifier, count_parameters, forward_in_pieces
from nnlab.models.pooling import MaxPool2d


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


def _with_torch_pooling(net: CNN) -> CNN:
    """The same network with torch's own nn.MaxPool2d in place of nnlab's."""
    for i, layer in enumerate(net.features):
        if isinstance(layer, MaxPool2d):
            net.features[i] = torch.nn.MaxPool2d(layer.kernel_size)
    return net


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "ceil_mode"),
    [(2, None, 0, 1, False), (3, 1, 1, 1, False), (3, 2, 1, 2, True), (2, 1, 0, 1, True), (3, None, 0, 2, False)],
)
def test_max_pooling_matches_torch_values_ties_nans_and_gradients(kernel, stride, padding, dilation, ceil_mode):
    torch.manual_seed(0)
    x = torch.randint(-2, 3, (3, 4, 11, 9)).float()  # few distinct values: many ties in a window
    x[0, 0, 0, 0], x[1, 2, 3, 4], x[2, 1, 5, 5] = float("nan"), float("-inf"), float("nan")
    settings = (kernel, stride, padding, dilation)
    ours, theirs = MaxPool2d(*settings, ceil_mode=ceil_mode), torch.nn.MaxPool2d(*settings, ceil_mode=ceil_mode)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(a), theirs(b)
    grad = torch.randn_like(out_theirs)
    out_ours.backward(grad)
    out_theirs.backward(grad)
    assert torch.equal(out_ours.nan_to_num(99.0), out_theirs.nan_to_num(99.0))
    assert out_ours.is_contiguous()
    assert torch.equal(a.grad, b.grad)  # the same index chosen in every window, ties and NaNs too
    with torch.no_grad():
        assert torch.equal(ours(x).nan_to_num(99.0), theirs(x).nan_to_num(99.0))


def test_cnn_trains_to_the_same_weights_as_with_torch_pooling():
    def train(replace: bool) -> tuple[CNN, torch.Tensor]:
        torch.manual_seed(3)
        net = CNN(channels=[4, 8], hidden_size=16)
        if replace:
            _with_torch_pooling(net)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        data = torch.Generator().manual_seed(1)
        for _ in range(5):
            x, y = torch.rand(16, 1, 28, 28, generator=data), torch.randint(0, 10, (16,), generator=data)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            return net, net(torch.rand(8, 1, 28, 28, generator=data))

    (ours, logits_ours), (theirs, logits_theirs) = train(False), train(True)
    assert sum(isinstance(m, MaxPool2d) for m in ours.modules()) == 2
    assert not any(isinstance(m, MaxPool2d) for m in theirs.modules())
    assert all(torch.equal(p, q) for p, q in zip(ours.state_dict().values(), theirs.state_dict().values()))
    assert torch.equal(logits_ours, logits_theirs)


def _textbook_order(net: CNN) -> CNN:
    """A copy of ``net`` whose blocks run convolution, ReLU, then torch's own max pooling."""
    twin = _with_torch_pooling(copy.deepcopy(net))
    for pool in (1, 4):  # each block's pooling and ReLU trade places
        twin.features[pool], twin.features[pool + 1] = twin.features[pool + 1], twin.features[pool]
    return twin


def _windows(x: torch.Tensor) -> torch.Tensor:
    """The 2x2 pooling windows of ``x``, one per row of the last dimension."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_cnn_blocks_pool_before_the_relu_with_exactly_the_textbook_values_and_gradients(channels_last):
    torch.manual_seed(0)
    ours = CNN(channels=[4, 8], hidden_size=16)
    with torch.no_grad():  # half-integer weights on integer pixels: many tied and many all-negative windows
        for conv in (ours.features[0], ours.features[3]):
            conv.weight.copy_(conv.weight.mul(4).round().div(2))
            conv.bias.zero_()
    theirs = _textbook_order(ours)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    ours, theirs = ours.to(memory_format=layout), theirs.to(memory_format=layout)
    x = torch.randint(0, 3, (16, 1, 28, 28)).float().to(memory_format=layout)
    windows = _windows(torch.relu(ours.features[0](x)))
    top = windows.amax(-1)
    assert ((windows == top.unsqueeze(-1)).sum(-1) > 1).logical_and(top > 0).any()  # a tie for a positive maximum
    assert (top == 0).any()  # and a window the ReLU zeroes entirely
    optimizers = [torch.optim.Adam(net.parameters(), lr=1e-2) for net in (ours, theirs)]
    for step in range(4):
        batch = x if step == 0 else torch.rand(16, 1, 28, 28).to(memory_format=layout)
        logits = []
        for net, optimizer in zip((ours, theirs), optimizers):
            torch.manual_seed(step)  # the same dropout masks
            optimizer.zero_grad()
            logits.append(net(batch))
            torch.nn.functional.cross_entropy(logits[-1], torch.arange(16) % 10).backward()
            optimizer.step()
        assert torch.equal(logits[0], logits[1])
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(ours.parameters(), theirs.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(ours.state_dict().values(), theirs.state_dict().values()))


def _input_sizes(net: torch.nn.Module) -> list[int]:
    """The batch sizes ``net`` is called with from now on."""
    sizes: list[int] = []
    net.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    return sizes


@pytest.mark.parametrize("net", [LinearClassifier(), MLP(), CNN(channels=[4, 8], hidden_size=16)])
def test_inference_in_pieces_gives_the_whole_batch_logits(net):
    torch.manual_seed(0)
    net.eval()
    x = torch.randn(1000, 1, 28, 28)
    with torch.no_grad():
        whole = net(x)
        sizes = _input_sizes(net)
        pieces = forward_in_pieces(net, x)
        small = forward_in_pieces(net, x[:100])
    assert sizes == [256, 256, 256, 232, 100] and INFERENCE_PIECE == 256
    assert torch.equal(pieces, whole)
    assert torch.equal(small, whole[:100])


def test_validation_runs_the_network_in_pieces_with_the_whole_batch_metrics():
    torch.manual_seed(0)
    net = CNN(channels=[4, 8], hidden_size=16)
    module = Classifier(net, torch.optim.Adam).eval()
    x, y = torch.randn(600, 1, 28, 28), torch.randint(0, 10, (600,))
    with torch.no_grad():
        logits = net(x)
        sizes = _input_sizes(net)
        module.validation_step((x, y), 0)
    loss, acc = RunningMean(), RunningAccuracy()
    loss.update(torch.nn.functional.cross_entropy(logits, y), weight=600)
    acc.update(logits, y)
    assert sizes == [256, 256, 88]
    assert module.epoch_metrics("val") == {"val/loss": loss.compute(), "val/acc": acc.compute()}
