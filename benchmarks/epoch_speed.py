"""Seconds per training epoch: plain PyTorch loop vs nnlab's Lightning path, same tensors.

    python benchmarks/epoch_speed.py --model mlp --epochs 3 --batch-size 128
Needs the prepared MNIST (dvc repro prepare_mnist). Prints a table and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import time

import lightning as L
import torch
from hydra.utils import instantiate

from nnlab.config.compose import compose_config
from nnlab.training.fit import build_module
from nnlab.training.history import EpochHistory


def plain_loop(net, x, y, batch_size: int, epochs: int, lr: float) -> list[float]:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(y), generator=gen)
        net.train()
        start = time.perf_counter()
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return times


def lightning_path(overrides: list[str], epochs: int) -> list[float]:
    cfg = compose_config(
        overrides + [f"trainer.max_epochs={epochs}", "logger=none", "trainer.enable_progress_bar=false"]
    )
    L.seed_everything(0, verbose=False)
    datamodule, module = instantiate(cfg.data), build_module(cfg)
    history = EpochHistory()
    trainer = instantiate(cfg.trainer, callbacks=[history], logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=datamodule)
    return [r["train_seconds"] for r in history.rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="mlp", choices=["linear", "mlp", "cnn"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    overrides = [
        "data=mnist",
        f"model={args.model}",
        "optimizer=adam",
        "scheduler=none",
        f"data.batch_size={args.batch_size}",
        "trainer=cpu",
    ]
    cfg = compose_config(overrides)
    datamodule, module = instantiate(cfg.data), build_module(cfg)
    datamodule.setup()
    x, y = datamodule.splits["train"]
    plain = plain_loop(module.net, x, y, args.batch_size, args.epochs, 1e-3)
    light = lightning_path(overrides, args.epochs)
    # The first epoch carries one-off warm-up; compare the best epoch of each.
    result = {
        "model": args.model,
        "batch_size": args.batch_size,
        "samples": len(y),
        "plain_s": round(min(plain), 3),
        "lightning_s": round(min(light), 3),
        "ratio": round(min(light) / min(plain), 2),
        "lightning_samples_per_s": round(len(y) / min(light)),
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
