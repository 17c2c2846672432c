"""Stage evaluate: ``python -m nnlab.evaluate experiment=mnist_cnn`` scores the best checkpoint on
the test split (MNIST's official 10,000 images; blobs' validation split). Writes metrics/<name>/
test.json, plots/<name>/confusion.csv + .png and predictions.png; logs them into the MLflow run
that trained the checkpoint."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from nnlab.config.compose import hydra_main
from nnlab.config.errors import TrackingError, fail, first_line
from nnlab.config.paths import Outputs, register_resolvers
from nnlab.config.schema import ConfigError, validate
from nnlab.report.tables import console

PROG = "nnlab.evaluate"


def evaluate(cfg: DictConfig) -> dict:
    import torch  # here, not at the top: --help and config errors need no torch

    from nnlab.data.tensors import plain_data
    from nnlab.models.checkpoint import network_from, read_checkpoint, run_id_in
    from nnlab.training.evaluation import score_and_write

    register_resolvers()  # ${nnlab_root:} also in a launcher's worker process
    validate(cfg)
    out = Outputs.in_folder(Path(cfg.run_dir)) if cfg.run_dir else Outputs.canonical(cfg.paths, cfg.name)
    best = out.models / "best.ckpt"
    checkpoint = read_checkpoint(best)  # once: the network and its run id
    net, _ = network_from(checkpoint, best)
    record = None
    if cfg.logger.get("mlflow"):  # MLflow is imported only when tracking
        from nnlab.tracking import record
    # before scoring: see its docstring
    run = record.evaluation_run(cfg, out.models, run_id_in(checkpoint)) if record else None
    datamodule = plain_data(cfg.data)  # no Lightning: scoring needs no Trainer
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics, files = score_and_write(net.to(device), datamodule, cfg.name, out.metrics, out.plots)
    if run:
        record.record_evaluation(cfg, run, datamodule, metrics, files)
    console.print(
        f"[bold]{cfg.name}[/]: test accuracy {metrics['test_acc']:.4f}, loss {metrics['test_loss']:.4f} "
        f"on {metrics['n']} samples -> {out.metrics / 'test.json'}"
    )
    return metrics


def _task(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except ConfigError as exc:
        fail(PROG, f"config: {exc}")
    except FileNotFoundError as exc:
        fail(PROG, f"{exc} (train it first: dvc repro train@{cfg.name})")
    except ValueError as exc:  # a checkpoint nnlab did not write or refuses, data that is wrong
        fail(PROG, first_line(exc))
    except TrackingError as exc:  # the store is down, or lacks the run that trained the checkpoint
        fail(PROG, str(exc), code=1)


def main() -> None:
    hydra_main(PROG, _task, quick_exit=True)


if __name__ == "__main__":
    main()
