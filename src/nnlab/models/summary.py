"""A Keras-style model summary: layer, output shape, parameter count."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn


def summarize(net: nn.Module, input_shape: Sequence[int]) -> list[dict]:
    """One row per leaf layer, in call order, from one forward pass of a dummy batch of 1."""
    rows: list[dict] = []

    def hook(name, module, _inputs, output):
        rows.append(
            {
                "layer": name,
                "type": type(module).__name__,
                "output_shape": [None, *output.shape[1:]],
                "parameters": sum(p.numel() for p in module.parameters(recurse=False)),
            }
        )

    handles = []
    for name, module in net.named_modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(partial(hook, name)))
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    return rows


def format_summary(rows: list[dict], title: str = "Model") -> str:
    header = ("Layer (type)", "Output Shape", "Param #")
    lines = [(f"{r['layer']} ({r['type']})", str(tuple(r["output_shape"])), f"{r['parameters']:,}") for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) + 2 for i, h in enumerate(header)]
    rule = "=" * sum(widths)

    def fmt(cells):
        return "".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    total = sum(r["parameters"] for r in rows)
    return "\n".join(
        [f'Model: "{title}"', rule, fmt(header), rule, *map(fmt, lines), rule, f"Total params: {total:,}", ""]
    )
