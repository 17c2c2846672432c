"""Max pooling that takes PyTorch's fast CPU kernel and gives exactly ``nn.MaxPool2d``'s results.

On the CPU, PyTorch's max-pooling kernel for NCHW tensors is several times slower than its
kernel for channels-last (NHWC) tensors: 6 ms against 1 ms for the CNN's first pooling of a
batch of 128 on the 2-core machine, a sixth of the whole training step. Both kernels scan each
window in the same order and keep the first maximum (or the first NaN), so they pick the same
values and the same indices. ``MaxPool2d`` pools a contiguous CPU tensor through the NHWC kernel
and hands back contiguous tensors; its gradient is the NCHW kernel's, from those same indices.
The rest of the network keeps its layout, so the convolutions, and every value, stay as they were.
Training turns a CNN channels-last on the CPU anyway (nnlab.models.networks.prefers_channels_last);
this serves the NCHW tensors of a network loaded to score or predict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NHWC = torch.channels_last


class _PoolThroughNHWC(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, pool: MaxPool2d) -> torch.Tensor:
        y, indices = F.max_pool2d(x.contiguous(memory_format=NHWC), *pool.arguments(), return_indices=True)
        ctx.save_for_backward(x, indices.contiguous())
        ctx.pool = pool
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, indices = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode = ctx.pool.arguments()
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, kernel, stride, padding, dilation, ceil_mode, indices
        )
        return grad_x, None


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with the same outputs, indices and gradients, faster on the CPU."""

    def arguments(self) -> tuple[list[int], list[int], list[int], list[int], bool]:
        def pair(v) -> list[int]:
            return list(v) if isinstance(v, (tuple, list)) else [v, v]

        stride = self.stride if self.stride is not None else self.kernel_size
        return pair(self.kernel_size), pair(stride), pair(self.padding), pair(self.dilation), self.ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nchw_on_cpu = x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous()
        if not nchw_on_cpu or self.return_indices or torch.compiler.is_compiling():
            return super().forward(x)  # a GPU, channels-last already, or a compiled graph
        if torch.is_grad_enabled() and x.requires_grad:
            return _PoolThroughNHWC.apply(x, self)
        return F.max_pool2d(x.contiguous(memory_format=NHWC), *self.arguments()).contiguous()
