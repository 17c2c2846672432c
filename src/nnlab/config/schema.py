"""Dataclass schemas for every config group and params.yaml section, checked one way.

Hydra composes plain YAML; ``validate(cfg)`` then checks each group against the schema
registered for its ``_target_`` (unknown keys, wrong types) and each schema's ``__post_init__``
checks the values. ``check_section`` does the same for a section of params.yaml. Every failure
is a ``ConfigError`` whose message is one line naming the key.

A data module or network of one's own registers its schema beside its class with
``@register_schema(group)`` (docs/extending.md); a ``_target_`` with no registered schema is
refused, after importing the module it names if that module is nnlab's own.

The YAML files in conf/ are the one source of every value: a schema field is ``MISSING`` (it
must come from the config) unless no config file sets it (tests/test_config.py checks both).
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from typing import Any, get_args, get_type_hints

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from nnlab.errors import NnlabError

# The keys of nnlab.models.networks.ACTIVATIONS, named here so that composing and checking a config
# imports no torch (tests/test_startup.py checks that they agree).
ACTIVATIONS = ("relu", "sigmoid", "tanh")

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # eager and aot_eager: quick checks of the path
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def unknown_tracking_scheme(uri: str | None) -> str | None:
    """The scheme of a tracking URI that MLflow cannot use (None: a known scheme, no scheme, no URI);
    both the config's URI and MLFLOW_TRACKING_URI are checked by it."""
    scheme = uri.split(":", 1)[0] if uri and ":" in uri else None
    return scheme if scheme is not None and scheme not in TRACKING_SCHEMES else None


class ConfigError(NnlabError, ValueError):
    """A config value that is unknown, of the wrong type or impossible (one-line message)."""

    label = "config: "
    exit_code = 2


class ParamsError(ConfigError):
    """A value in a section of params.yaml (a prepare stage's settings) that the section's schema refuses."""

    label = "params.yaml "


def is_int(value: object) -> bool:
    """A whole number as YAML or NumPy gives one (int, numpy.int64, ...), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check(ok: bool, key: str, allowed: str) -> None:
    """ConfigError ``<key>: <allowed>`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {allowed}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        check(value is None or value > 0, name, f"must be > 0, got {value}")


def _sizes(obj: Any, *names: str) -> None:
    for name in names:
        values = getattr(obj, name)
        check(all(v > 0 for v in values), name, f"all sizes must be > 0, got {list(values)}")


def _one_of(obj: Any, name: str, choices) -> None:
    value = getattr(obj, name)
    check(value in choices, name, f"must be one of {', '.join(choices)}, got {value!r}")


def _fraction(obj: Any, *names: str, upper_open: bool = True) -> None:
    for name in names:
        value = getattr(obj, name)
        ok = 0 <= value < 1 if upper_open else 0 <= value <= 1
        check(ok, name, f"must be in [0, 1{')' if upper_open else ']'}, got {value}")


# The groups whose schema is chosen by the config's ``_target_``: target -> schema.
SCHEMAS: dict[str, dict[str, type]] = {group: {} for group in ("data", "model", "optimizer", "scheduler", "trainer")}


def register_schema(group: str):
    """Class decorator: the dataclass checks every ``group`` config whose ``_target_`` is the
    default of its own ``_target_`` field. Put it beside the class the config builds::

        @register_schema("data")
        @dataclass
        class CirclesConfig(DataSchema):
            _target_: str = "nnlab.data.circles.CirclesDataModule"

    What a schema of one's own needs is importable from here: ``DataSchema`` and ``LinearModel``
    (the fields every data module and network takes), ``check`` (a one-line failure naming the
    key) and ``MISSING`` (a value that must come from the config file).
    """
    if group not in SCHEMAS:
        raise ValueError(f"register_schema: group must be one of {', '.join(SCHEMAS)}, got {group!r}")

    def register(schema: type) -> type:
        target = {f.name: f.default for f in fields(schema)}.get("_target_") if is_dataclass(schema) else None
        if not isinstance(target, str):
            raise TypeError(f"register_schema: {schema!r} must be a dataclass with a _target_ default")
        known = SCHEMAS[group].get(target)
        # the same class again (its module imported anew) replaces itself; another class may not
        if known is not None and (known.__module__, known.__qualname__) != (schema.__module__, schema.__qualname__):
            raise ValueError(f"register_schema: {target} already has the schema {known.__qualname__}")
        SCHEMAS[group][target] = schema
        return schema

    return register


# ---------------------------------------------------------------- data
@dataclass
class DataSchema:
    """What every data module takes (a data module's own schema extends it)."""

    _target_: str = MISSING
    data_dir: str = MISSING
    input_shape: list[int] = MISSING
    num_classes: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    seed: int = MISSING

    def __post_init__(self):
        _positive(self, "batch_size", "eval_batch_size", "num_classes")


@register_schema("data")
@dataclass
class MNISTData(DataSchema):
    _target_: str = "nnlab.data.modules.MNISTDataModule"
    mean: float = MISSING
    std: float = MISSING
    shift: int = MISSING  # augmentation: random shifts of up to this many pixels

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "std")
        check(0 <= self.shift <= 8, "shift", f"must be 0-8 pixels, got {self.shift}")


@register_schema("data")
@dataclass
class BlobsData(DataSchema):
    _target_: str = "nnlab.data.modules.BlobsDataModule"


# ---------------------------------------------------------------- models
@register_schema("model")
@dataclass
class LinearModel:
    _target_: str = "nnlab.models.networks.LinearClassifier"
    input_shape: list[int] = MISSING
    num_classes: int = MISSING

    def __post_init__(self):
        _positive(self, "num_classes")
        _sizes(self, "input_shape")


@register_schema("model")
@dataclass
class MLPModel(LinearModel):
    _target_: str = "nnlab.models.networks.MLP"
    hidden_sizes: list[int] = MISSING
    activation: str = MISSING
    dropout: float = MISSING

    def __post_init__(self):
        super().__post_init__()
        _sizes(self, "hidden_sizes")
        _one_of(self, "activation", ACTIVATIONS)
        _fraction(self, "dropout")
        check(len(self.hidden_sizes) > 0, "hidden_sizes", "needs at least one layer (for none, use model=linear)")


@register_schema("model")
@dataclass
class CNNModel(LinearModel):
    _target_: str = "nnlab.models.networks.CNN"
    channels: list[int] = MISSING
    kernel_size: int = MISSING
    hidden_size: int = MISSING
    conv_dropout: float = MISSING
    dropout: float = MISSING

    def __post_init__(self):
        super().__post_init__()
        check(len(self.input_shape) == 3, "input_shape", "a CNN needs [channels, height, width]")
        _sizes(self, "channels")
        check(self.kernel_size % 2 == 1 and self.kernel_size > 0, "kernel_size", "must be a positive odd number")
        _positive(self, "hidden_size")
        _fraction(self, "conv_dropout", "dropout")


@register_schema("model")
@dataclass
class NumpyMLPModel(LinearModel):
    """Reference E4: sigmoid MLP in NumPy, trained with plain SGD (optimizer.lr, data.batch_size)."""

    _target_: str = "nnlab.models.numpy_mlp.NumpyMLP"
    init: str = MISSING
    hidden_sizes: list[int] = MISSING
    seed: int = MISSING

    def __post_init__(self):
        super().__post_init__()
        _one_of(self, "init", ("xavier", "normal", "uniform"))
        _sizes(self, "hidden_sizes")


# ---------------------------------------------------------------- optimizers
@dataclass
class _Optimizer:
    """What every optimizer takes."""

    _target_: str = MISSING
    _partial_: bool = True
    lr: float = MISSING
    weight_decay: float = MISSING
    # torch's implementations: null lets nnlab choose (fused on CUDA, the single-tensor path on
    # the CPU, as every earlier run); true or false is the config's choice on any device.
    foreach: bool | None = MISSING

    def __post_init__(self):
        _positive(self, "lr")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        fused = getattr(self, "fused", None)
        check(not (fused and self.foreach), "fused", "must not be true together with foreach (torch runs one of them)")
        self.check_own()

    def check_own(self) -> None:
        """The checks of one optimizer's own settings."""


@register_schema("optimizer")
@dataclass
class SGDOptimizer(_Optimizer):
    """Stochastic gradient descent, with momentum when asked."""

    _target_: str = "torch.optim.SGD"
    momentum: float = MISSING
    nesterov: bool = MISSING
    fused: bool | None = MISSING  # one kernel for all the weights (CPU and CUDA)

    def check_own(self) -> None:
        _fraction(self, "momentum")


@register_schema("optimizer")
@dataclass
class AdamOptimizer(_Optimizer):
    """Adam: per-weight step sizes from running moments of the gradient."""

    _target_: str = "torch.optim.Adam"
    betas: list[float] = MISSING
    eps: float = MISSING
    fused: bool | None = MISSING  # one kernel for all the weights (CPU and CUDA)

    def check_own(self) -> None:
        _positive(self, "eps")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")


@register_schema("optimizer")
@dataclass
class AdamWOptimizer(AdamOptimizer):
    """AdamW: Adam with weight decay applied to the weights, not the gradient."""

    _target_: str = "torch.optim.AdamW"


@register_schema("optimizer")
@dataclass
class RMSpropOptimizer(_Optimizer):
    """RMSprop: steps scaled by a running mean of squared gradients."""

    _target_: str = "torch.optim.RMSprop"
    alpha: float = MISSING
    eps: float = MISSING
    momentum: float = MISSING

    def check_own(self) -> None:
        _positive(self, "eps")
        _fraction(self, "alpha", "momentum")


# ---------------------------------------------------------------- schedulers
@register_schema("scheduler")
@dataclass
class OneCycleScheduler:
    _target_: str = "torch.optim.lr_scheduler.OneCycleLR"
    _partial_: bool = True
    max_lr: float = MISSING
    total_steps: int | None = MISSING  # None: the run's real number of steps
    pct_start: float = MISSING
    anneal_strategy: str = MISSING
    div_factor: float = MISSING
    final_div_factor: float = MISSING

    def __post_init__(self):
        _positive(self, "max_lr", "total_steps", "div_factor", "final_div_factor")
        check(0 < self.pct_start < 1, "pct_start", f"must be in (0, 1), got {self.pct_start}")
        _one_of(self, "anneal_strategy", ("cos", "linear"))


@register_schema("scheduler")
@dataclass
class CosineScheduler:
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    _partial_: bool = True
    T_max: int | None = MISSING  # None: the run's real number of steps
    eta_min: float = MISSING

    def __post_init__(self):
        _positive(self, "T_max")
        check(self.eta_min >= 0, "eta_min", "must be >= 0")


# ---------------------------------------------------------------- trainer, logger, paths
@register_schema("trainer")
@dataclass
class TrainerConfig:
    _target_: str = "lightning.Trainer"
    accelerator: str = MISSING
    devices: Any = MISSING
    strategy: Any = MISSING
    num_nodes: int = MISSING
    precision: Any = MISSING
    max_epochs: int = MISSING
    deterministic: Any = MISSING
    gradient_clip_val: float | None = MISSING
    limit_train_batches: Any = MISSING  # a fraction (0.05) or a number of batches (20)
    limit_val_batches: Any = MISSING
    num_sanity_val_steps: int = MISSING
    enable_progress_bar: bool = MISSING
    enable_model_summary: bool = MISSING
    log_every_n_steps: int = MISSING

    def __post_init__(self):
        _one_of(self, "accelerator", ACCELERATORS)
        for name in ("limit_train_batches", "limit_val_batches"):
            value = getattr(self, name)
            check(
                value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0),
                name,
                f"must be a fraction (0.1) or a number of batches (20), got {value!r}",
            )
        _positive(self, "max_epochs", "num_nodes", "log_every_n_steps", "limit_train_batches", "gradient_clip_val")
        check(
            self.limit_val_batches != 0,
            "limit_val_batches",
            "must be > 0: the best checkpoint is chosen by validation loss (null: all batches)",
        )
        check(self.deterministic in (True, False, "warn"), "deterministic", "must be true, false or warn")


@dataclass
class MlflowConfig:
    tracking_uri: str | None = MISSING  # None: MLFLOW_TRACKING_URI, else sqlite at the repository root
    experiment_name: str = MISSING
    log_model: bool = MISSING  # a pyfunc model (tracking.served_model): images of any size in, labels out
    register: bool = MISSING  # register the model per experiment; best test accuracy = @champion
    system_metrics_interval: float | None = MISSING  # seconds between CPU/memory/GPU samples; null: off

    def __post_init__(self):
        check(
            self.system_metrics_interval is None or self.system_metrics_interval > 0,
            "mlflow.system_metrics_interval",
            f"must be > 0 seconds or null, got {self.system_metrics_interval!r}",
        )
        check(
            unknown_tracking_scheme(self.tracking_uri) is None,
            "mlflow.tracking_uri",
            f"scheme must be one of {', '.join(TRACKING_SCHEMES)}, got {self.tracking_uri!r}",
        )


# Lightning loggers that may run beside nnlab's own MLflow record (conf/logger/lightning/).
LIGHTNING_LOGGERS = (
    "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.loggers.TensorBoardLogger",
    "dvclive.lightning.DVCLiveLogger",
)


@dataclass
class LoggerConfig:
    mlflow: MlflowConfig | None = MISSING
    lightning: dict[str, Any] = field(default_factory=dict)  # name -> {_target_: one of LIGHTNING_LOGGERS}

    def __post_init__(self):
        for name, spec in self.lightning.items():
            target = spec.get("_target_") if isinstance(spec, dict) else None
            check(
                target in LIGHTNING_LOGGERS,
                f"lightning.{name}._target_",
                f"must be one of {', '.join(LIGHTNING_LOGGERS)} (MLflow is recorded by nnlab itself: "
                f"a second MLflow logger would duplicate the run), got {target!r}",
            )


# The project's folders; conf/paths/*.yaml say where they are (absolute, from ``${nnlab_root:}``).
FOLDERS = ("root_dir", "data_dir", "models_dir", "metrics_dir", "plots_dir", "reports_dir", "log_dir")
PathsConfig = make_dataclass("PathsConfig", [(key, str, field(default=MISSING)) for key in FOLDERS])


PLAIN_GROUPS = {"logger": LoggerConfig, "paths": PathsConfig}


@dataclass
class RootConfig:
    name: str = MISSING
    seed: int = MISSING
    label_smoothing: float = MISSING
    test_after_fit: bool = MISSING
    reference: str | None = MISSING
    outputs: str = MISSING  # auto: canonical inside a DVC stage, else the run's own folder
    resume: bool = MISSING  # continue the last unfinished run of this name from its last.ckpt
    run_dir: str | None = MISSING  # evaluate: a run folder (logs/runs/<name>/<time>) instead of the canonical outputs
    compile: str | None = MISSING  # torch.compile's backend for the network (inductor); null: not compiled
    steps_per_call: Any = MISSING  # optimizer steps per Lightning training batch: auto or a number >= 1

    def __post_init__(self):
        _fraction(self, "label_smoothing")
        check(
            self.steps_per_call == "auto" or (type(self.steps_per_call) is int and self.steps_per_call >= 1),
            "steps_per_call",
            f"must be auto or a whole number >= 1, got {self.steps_per_call!r}",
        )
        _one_of(self, "outputs", ("auto", "canonical", "run"))
        if self.compile is not None:
            _one_of(self, "compile", COMPILE_BACKENDS)
        # name becomes a folder under models/, metrics/, plots/: no '', '..', '/' or spaces
        check(
            bool(NAME_PATTERN.fullmatch(self.name)) and ".." not in self.name,
            "name",
            f"must be a plain name (letters, digits, '.', '_', '-'; starting with a letter or digit), "
            f"got {self.name!r}",
        )
        check(0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32), got {self.seed}")


GROUPS = tuple(SCHEMAS) + tuple(PLAIN_GROUPS)
CALLBACK_PREFIX = "lightning.pytorch.callbacks."


# The epoch metrics a checkpoint may monitor (what the module logs), and their history columns.
MONITORED = {"val/loss": "val_loss", "val/acc": "val_acc", "train/loss": "train_loss", "train/acc": "train_acc"}


def _check_callbacks(node: Any) -> None:
    """``callbacks``: name -> a Lightning callback config (or null to drop it); the checkpoint is required."""
    check(isinstance(node, DictConfig), "callbacks", "must be a mapping of name: {_target_: ...}; see conf/callbacks/")
    for name, spec in node.items():
        target = spec.get("_target_") if isinstance(spec, DictConfig) else None
        check(
            spec is None or (isinstance(target, str) and target.startswith(CALLBACK_PREFIX)),
            f"callbacks.{name}._target_",
            f"must be a Lightning callback ({CALLBACK_PREFIX}...), got {target!r}",
        )
    check(
        node.get("model_checkpoint") is not None,
        "callbacks.model_checkpoint",
        "is required: it keeps the best epoch's checkpoint",
    )
    checkpoint = node.model_checkpoint
    check(
        checkpoint.get("monitor") in MONITORED,
        "callbacks.model_checkpoint.monitor",
        f"must be one of {', '.join(MONITORED)} (it chooses the best epoch), got {checkpoint.get('monitor')!r}",
    )
    check(checkpoint.get("mode") in ("min", "max"), "callbacks.model_checkpoint.mode", "must be min or max")


def _allowed(schema: type, key: str = "") -> str:
    """The keys a schema allows; for a dotted ``key``, those of the nested schema it lies in."""
    for part in key.split(".")[:-1]:
        hint = get_type_hints(schema).get(part)
        nested = [t for t in get_args(hint) if is_dataclass(t)] if get_args(hint) else [hint]
        if not nested or not is_dataclass(nested[0]):
            break
        schema = nested[0]
    return ", ".join(f.name for f in fields(schema) if f.name not in ("_target_", "_partial_"))


def _schema_for(group: str, node: Any) -> type | None:
    if group in PLAIN_GROUPS:
        return PLAIN_GROUPS[group]
    if node is None or (isinstance(node, DictConfig) and len(node) == 0):
        if group == "scheduler":
            return None  # scheduler=none
        raise ConfigError(f"{group}: missing; choose one of the configs in conf/{group}/")
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    known = SCHEMAS[group]
    if isinstance(target, str) and target not in known:
        _import_own_module(target)  # its schema is registered beside its class
    check(target in known, f"{group}._target_", f"must be one of {', '.join(known)}, got {target!r}")
    return known[target]


def _import_own_module(target: str) -> None:
    """Import the module a ``_target_`` names when it is one of nnlab's own (src/nnlab/...), so
    that a schema registered there is known. Nothing outside nnlab is imported by a config
    value; a module that does not exist leaves the target unknown (refused by the caller)."""
    module = target.rpartition(".")[0]
    if not module.startswith("nnlab."):
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise  # the module exists but imports something missing: its own bug, with its traceback


def _convert(prefix: str, schema: type, node: Any) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}.{exc}") from None
    except ConfigKeyError as exc:
        key = exc.full_key or exc.key
        raise ConfigError(f"{prefix}.{key}: unknown key; allowed: {_allowed(schema, str(key))}") from None
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{prefix}.{exc.full_key or exc.key}: missing") from None
    except ValidationError as exc:
        key = exc.full_key or exc.key
        raise ConfigError(f"{prefix}.{key}: {str(exc.msg).splitlines()[0]}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{prefix}: {str(exc).splitlines()[0]}") from None


def check_group(group: str, node: Any) -> Any:
    """One group's values (a plain mapping) as its checked schema object; ConfigError if not."""
    node = OmegaConf.create(node) if not isinstance(node, DictConfig) else node
    schema = _schema_for(group, node)
    return _convert(group, schema, node) if schema else None


def _check_finite(tree: Any, prefix: str = "") -> None:
    """No nan or inf anywhere: a learning rate of inf or a data.mean of nan trains a NaN model."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        name = f"{prefix}.{key}" if prefix and isinstance(key, str) else f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}: must be a finite number, got {value}")
        _check_finite(value, name)


def validate(cfg: DictConfig) -> None:
    """Check a composed config: ConfigError with a one-line message, else nothing. Callers go on
    reading ``cfg`` itself: Hydra's ``instantiate`` builds from it, and the checked dataclass
    objects are only how each schema's ``__post_init__`` gets to see the values."""
    allowed_top = {f.name for f in fields(RootConfig)} | set(GROUPS) | {"callbacks"}
    unknown = sorted(set(cfg.keys()) - allowed_top)
    check(not unknown, str(unknown[0]) if unknown else "", f"unknown key; allowed: {', '.join(sorted(allowed_top))}")
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{getattr(exc, 'full_key', '')}: {str(exc).splitlines()[0]}") from None
    _check_finite(resolved)
    node = OmegaConf.create(resolved)
    for group in GROUPS:
        check_group(group, node.get(group))
    _check_callbacks(node.get("callbacks"))
    top = {k: v for k, v in node.items() if k not in GROUPS and k != "callbacks"}
    _convert("config", RootConfig, OmegaConf.create(top))


def check_section(section: str, schema: type, values: object) -> Any:
    """A section of params.yaml (``mnist:``, ``blobs:``) as its checked ``schema`` object, the
    way ``check_group`` checks a config group; ParamsError ``<section>.<key>: ...`` if not."""
    allowed = ", ".join(f.name for f in fields(schema))
    if not isinstance(values, dict):
        raise ParamsError(f"{section}: must be a mapping of {allowed}, got {values!r}")
    try:
        return _convert(section, schema, OmegaConf.create(values))
    except ConfigError as exc:
        raise ParamsError(str(exc)) from None
    except OmegaConfBaseException as exc:  # a value YAML cannot hold (OmegaConf.create refuses it)
        raise ParamsError(f"{section}: {str(exc).splitlines()[0]}") from None


def allowed_keys(full_key: str, cfg: DictConfig) -> str:
    """What may stand at ``full_key`` (for Hydra's own override errors)."""
    group = full_key.split(".")[0]
    if group not in GROUPS:
        return ", ".join(sorted({f.name for f in fields(RootConfig)} | set(GROUPS)))
    try:
        schema = _schema_for(group, cfg.get(group))
    except ConfigError:
        return "see conf/" + group
    return _allowed(schema) if schema else "(none)"
