"""The project's root and every output folder: the one place that decides where files go."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nnlab.errors import NnlabError


def _is_root(folder: Path) -> bool:
    return (folder / ".dvc").is_dir() or (folder / "conf" / "train.yaml").is_file()


def find_root(start: str | Path | None = None) -> Path:
    """``NNLAB_ROOT``, else the nearest folder above ``start`` (the working directory) that holds
    the project (a ``.dvc/`` or ``conf/train.yaml``; reference/ has a dvc.yaml but is not the
    root), else the nearest with a params.yaml, else ``start``.

    Not ``DVC_ROOT``: ``dvc exp run --temp`` and queued experiments run in a copy of the
    repository under .dvc/tmp/exps/ while ``DVC_ROOT`` names the parent; params, data and
    outputs must be the copy's (see ``store_root`` for what is shared)."""
    if os.environ.get("NNLAB_ROOT"):
        return Path(os.environ["NNLAB_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    folders = (here, *here.parents)
    for folder in folders:
        if _is_root(folder):
            return folder
    return next((f for f in folders if (f / "params.yaml").is_file()), here)


def store_root(root: Path) -> Path:
    """Where the embedded MLflow store lives: the parent repository of a temporary or queued
    DVC experiment (``DVC_ROOT``), so its runs join everyone else's; else ``root``."""
    parent = os.environ.get("DVC_ROOT")
    return Path(parent).resolve() if parent and not os.environ.get("NNLAB_ROOT") else Path(root)


def portable(tree, root: Path):
    """``tree`` with every absolute path inside ``root`` written relative to it: what a run's
    params show, so the same run on two machines has the same params."""
    if isinstance(tree, dict):
        return {k: portable(v, root) for k, v in tree.items()}
    if isinstance(tree, list):
        return [portable(v, root) for v in tree]
    if isinstance(tree, str) and os.path.isabs(tree):
        path = Path(tree)
        if path == Path(root) or Path(root) in path.parents:
            return path.relative_to(root).as_posix() or "."
    return tree


def data_set_name(target: str) -> str:
    """mnist or blobs: a data module's class name less ``DataModule`` (``MNISTDataModule`` -> ``mnist``)."""
    return target.rsplit(".", 1)[-1].removesuffix("DataModule").lower()


def register_resolvers() -> None:
    """``${nnlab_root:}`` in conf/paths/*.yaml and ``${nnlab_data_set:${data._target_}}`` (the
    data set's name) in conf/logger/mlflow.yaml; called by the composer before Hydra composes."""
    if not OmegaConf.has_resolver("nnlab_root"):
        OmegaConf.register_new_resolver("nnlab_root", lambda: str(find_root()))
    if not OmegaConf.has_resolver("nnlab_data_set"):
        OmegaConf.register_new_resolver("nnlab_data_set", data_set_name)
    if not OmegaConf.has_resolver("nnlab_run_stamp"):
        OmegaConf.register_new_resolver("nnlab_run_stamp", run_stamp, use_cache=True)


def conf_dir() -> Path:
    """The project's conf/ (where a DVC stage or a test runs), else the one beside this package."""
    here = find_root() / "conf"
    return here if (here / "train.yaml").is_file() else Path(__file__).resolve().parents[3] / "conf"


@dataclass
class Outputs:
    """Where one run's model, metrics and plots go."""

    models: Path
    metrics: Path
    plots: Path

    @classmethod
    def canonical(cls, paths: DictConfig, name: str) -> Outputs:
        """models/<name>, metrics/<name>, plots/<name>: what the DVC stages declare."""
        return cls(*(Path(paths[k]) / name for k in ("models_dir", "metrics_dir", "plots_dir")))

    @classmethod
    def in_folder(cls, base: Path) -> Outputs:
        return cls(base / "models", base / "metrics", base / "plots")

    def make(self) -> Outputs:
        for folder in (self.models, self.metrics, self.plots):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def canonical_outputs(outputs: str) -> bool:
    """Whether a run writes the DVC-tracked models/<name>, metrics/<name>, plots/<name>: inside a
    DVC stage (``outputs: auto``) or when asked (``outputs: canonical``); else its own folder."""
    return outputs == "canonical" or (outputs == "auto" and bool(os.environ.get("DVC_STAGE")))


def in_slurm_task() -> bool:
    """A Slurm task: a batch script or an srun step (an ``salloc`` shell is neither)."""
    return bool(os.environ.get("SLURM_JOB_ID")) and os.environ.get("SLURM_PROCID") is not None


def slurm_run_stamp() -> str | None:
    """``slurm-<job id>`` (batch script) or ``slurm-<job id>.<step id>`` (srun step) in a Slurm
    task, else None."""
    if not in_slurm_task():
        return None
    step = os.environ.get("SLURM_STEP_ID")
    return f"slurm-{os.environ['SLURM_JOB_ID']}" + (f".{step}" if step else "")


def run_stamp() -> str:
    """A new run folder's name (``${nnlab_run_stamp:}`` in ``hydra.run.dir``): the time with
    microseconds; in a Slurm task ``slurm-<job id>[.<step id>]``, the same for every task of a
    multi-process run and for a requeued job's restart (nnlab.training.slurm)."""
    return slurm_run_stamp() or f"{datetime.now():%Y-%m-%d_%H-%M-%S-%f}"


def new_run_folder(log_dir: str | Path, name: str) -> Path:
    """logs/runs/<name>/<run stamp>: what Hydra's run dir would be."""
    return Path(log_dir) / "runs" / name / run_stamp()


def unfinished_run(log_dir: str | Path, name: str) -> Path | None:
    """The newest run folder of ``name`` that still holds a last.ckpt (a run that did not finish)."""
    found = sorted(
        (p.stat().st_mtime, p.parents[1]) for p in (Path(log_dir) / "runs" / name).glob("*/models/last.ckpt")
    )
    return found[-1][1] if found else None


def move_into_place(work: Outputs, final: Outputs) -> None:
    """A finished run's outputs into the canonical places: the model folder is swapped whole
    (renames), metrics and plots file by file (os.replace), so readers never see half a result."""
    final.models.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(work.models, final.models)
    for src, dst in ((work.metrics, final.metrics), (work.plots, final.plots)):
        dst.mkdir(parents=True, exist_ok=True)
        for path in src.iterdir():
            os.replace(path, dst / path.name)


def replace_dir(new: str | Path, target: str | Path) -> None:
    """Put the finished folder ``new`` in place of ``target`` by renames (same file system):
    the old folder is moved aside first and deleted only once the new one is in place; it is
    put back if that fails. Readers see the old or the new folder, never a half-written one."""
    new, target = Path(new), Path(target)
    old = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        old.rmdir()
        target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def retrain_command(models_dir: str | Path, name: str, force: bool = True) -> str:
    """The command that writes ``models_dir`` again: the DVC stage when it is the canonical folder
    of an experiment params.yaml lists (``train@<name>``), else a training of that name (a run
    folder, or a name no stage has: a hint must never name a stage that does not exist)."""
    import yaml

    try:
        listed = (yaml.safe_load((find_root() / "params.yaml").read_text()) or {}).get("experiments") or {}
    except (OSError, ValueError, AttributeError):
        listed = {}
    if Path(models_dir).name == name and name in listed:
        return f"dvc repro {'-f ' if force else ''}train@{name}"
    return f"python -m nnlab.train name={name} with the experiment and overrides it was trained with"


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created with its folder if missing): one
    process at a time, however it was started, waits here for the others (Linux's flock)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_writable(folder: str | Path, key: str) -> None:
    """Create ``folder`` (the setting ``key`` names it) or say in one line why it cannot be: Hydra
    would fail creating its run folder there with a traceback."""
    from nnlab.config.schema import ConfigError

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot create {folder} ({exc.strerror}); choose a folder you can write") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {folder} is not writable by this user; choose a folder you can write")


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR)


def storage_error(exc: OSError) -> StorageError | None:
    """The one line for a file or folder nnlab could not write (None: not such an error)."""
    if exc.errno not in WRITE_ERRNOS:
        return None
    where = exc.filename2 or exc.filename
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(
            f"no space left on the disk{f' of {where}' if where else ''}: free space there (resume=true then "
            "continues from the last epoch written) or write elsewhere (paths.log_dir for run folders, "
            "MLFLOW_TRACKING_URI for the tracking store); nothing half-written was kept as a result"
        )
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # a folder that went away under the run
        return StorageError(f"{where or 'a file'}: {exc.strerror}; was a folder moved or deleted during the run?")
    return StorageError(
        f"cannot write {where or 'a file'} ({exc.strerror}); choose folders this user can write "
        "(paths.log_dir, paths.models_dir, paths.metrics_dir, paths.plots_dir)"
    )


class StorageError(NnlabError):
    """A file or folder nnlab writes that cannot be written: a full disk, no permission, no such place."""
