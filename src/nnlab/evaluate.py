"""Stage evaluate: ``python -m nnlab.evaluate experiment=mnist_cnn`` scores the best checkpoint on
the test split (MNIST's official 10,000 images; blobs' validation split). Writes metrics/<name>/
test.json, plots/<name>/confusion.csv + .png and predictions.png; logs them into the MLflow run
that trained the checkpoint."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from nnlab.config.compose import hydra_main
from nnlab.config.paths import Outputs, register_resolvers, retrain_command, storage_error
from nnlab.config.schema import validate
from nnlab.errors import CheckpointError, NnlabError, fail, report
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
    net, saved = network_from(checkpoint, best)
    check_same_data(saved, cfg, best)
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


def _data_of(cfg: DictConfig) -> tuple[str, list]:
    data = cfg.get("data") or {}
    return str(data.get("_target_", "?")).rsplit(".", 1)[-1], list(data.get("input_shape") or [])


def check_same_data(saved: DictConfig, cfg: DictConfig, best: Path) -> None:
    """The checkpoint must have been trained on the data this config scores it on: the run folder
    of another experiment would fail deep in a matrix product."""
    if _data_of(saved) == _data_of(cfg) and saved.get("data", {}).get("num_classes") == cfg.data.num_classes:
        return
    (kind, shape), (want_kind, want_shape) = _data_of(saved), _data_of(cfg)
    raise CheckpointError(
        f"{best} was trained by {saved.get('name')!r} on {kind} with inputs {shape}, but {cfg.name!r} scores "
        f"{want_kind} with inputs {want_shape}: give the experiment it was trained with (experiment=...)"
    )


def _task(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except FileNotFoundError as exc:
        models_dir = Path(cfg.run_dir) / "models" if cfg.run_dir else Path(cfg.paths.models_dir) / cfg.name
        fail(PROG, f"{exc} (train it first: {retrain_command(models_dir, cfg.name, force=False)})")
    except NnlabError as exc:  # a bad config, checkpoint or data; a tracking store that cannot be used
        report(PROG, exc)
    except OSError as exc:  # a full disk, a folder that cannot be written
        error = storage_error(exc)
        if error is None:
            raise
        report(PROG, error)


def main() -> None:
    hydra_main(PROG, _task, quick_exit=True)


if __name__ == "__main__":
    main()
