"""The sweeper's settings (``hydra.sweeper.*``), registered as ``hydra/sweeper=nnlab_optuna``, and
the one table of its samplers and pruners, registered as the groups ``hydra/sweeper/sampler`` and
``hydra/sweeper/pruner`` (as hydra-optuna-sweeper does): ``hydra/sweeper/pruner=threshold
hydra.sweeper.pruner.upper=0.5``.

A sampler's or pruner's keys are its Optuna constructor arguments; null means Optuna's default.
Values are checked when a search starts, each failure one line naming the key (so every field is
typed ``Any`` here: Hydra's own type errors span several lines).
"""

# No `from __future__ import annotations`: Hydra executes this module before it is in sys.modules,
# and dataclasses then cannot resolve string annotations.
import difflib
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class NnlabOptunaSweeperConf:
    _target_: str = "hydra_plugins.nnlab_optuna_sweeper.sweeper.NnlabOptunaSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler and pruner itself (and checks them)
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])

    # The study: a name (the same name continues it) in a database: a SQLAlchemy URL, else
    # $NNLAB_OPTUNA_STORAGE, else sqlite:///optuna.db at the project root.
    study_name: Any = None
    storage: Any = None
    # The objective: the best epoch's val_acc (maximize) or val_loss (minimize).
    metric: Any = "val_acc"
    direction: Any = "maximize"
    # Trials this invocation adds to the study; how many run at once (null: the launcher's
    # n_jobs for joblib, the cores for submitit_local, array_parallelism for SLURM, else 1).
    n_trials: Any = 20
    n_jobs: Any = None
    # Stop the search (exit 1) when more than this fraction of its trials failed.
    max_failure_rate: Any = 1.0
    # Dead workers: a trial lost with its worker continues as itself from its last finished epoch
    # (same trial, folder and MLflow run), up to max_retry times. Every running trial writes a
    # heartbeat every heartbeat_interval seconds; one silent for grace_period seconds (null: twice
    # the interval) is FAIL, and run again with the same values as a new trial up to max_retry
    # times (a trial lost with its process, not one that failed). max_retry null: no limit.
    heartbeat_interval: Any = 10
    grace_period: Any = None
    max_retry: Any = 1
    sampler: Any = MISSING  # from hydra/sweeper/sampler (MISSING: the group's node, not null, wins)
    pruner: Any = MISSING  # from hydra/sweeper/pruner
    # The search space: key -> choice(...), range(...), interval(...), tag(log, interval(...)),
    # tag(int, interval(...)), or a fixed value.
    params: Any = field(default_factory=dict)
    # Set by the sweeper for each job (study, trial, storage, parent run, threads); leave it null.
    job: Any = None


SETTINGS = tuple(f.name for f in fields(NnlabOptunaSweeperConf) if not f.name.startswith("_") and f.name != "defaults")


@dataclass(frozen=True)
class Choice:
    """One sampler or pruner: its Optuna class (in optuna.samplers / optuna.pruners) and the
    constructor arguments its config node offers."""

    cls: str
    arguments: tuple[str, ...] = ()


# The samplers and pruners nnlab offers, by their short names (hydra/sweeper/sampler=<name>).
SAMPLERS = {
    "tpe": Choice(
        "TPESampler",
        (
            *("seed", "n_startup_trials", "n_ei_candidates", "multivariate", "group", "constant_liar"),
            *("consider_prior", "prior_weight", "consider_magic_clip", "consider_endpoints"),
            "warn_independent_sampling",
        ),
    ),
    "random": Choice("RandomSampler", ("seed",)),
    "cmaes": Choice(
        "CmaEsSampler",
        (
            *("seed", "x0", "sigma0", "n_startup_trials", "warn_independent_sampling", "consider_pruned_trials"),
            *("restart_strategy", "popsize", "inc_popsize", "use_separable_cma", "with_margin", "lr_adapt"),
        ),
    ),
    "qmc": Choice(
        "QMCSampler", ("seed", "qmc_type", "scramble", "warn_asynchronous_seeding", "warn_independent_sampling")
    ),
    "gp": Choice("GPSampler", ("seed", "n_startup_trials", "deterministic_objective", "warn_independent_sampling")),
    "nsgaii": Choice("NSGAIISampler", ("seed", "population_size", "mutation_prob", "crossover_prob", "swapping_prob")),
}
PRUNERS = {
    "median": Choice("MedianPruner", ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials")),
    "percentile": Choice(
        "PercentilePruner", ("percentile", "n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials")
    ),
    "successive_halving": Choice(
        "SuccessiveHalvingPruner", ("min_resource", "reduction_factor", "min_early_stopping_rate", "bootstrap_count")
    ),
    "hyperband": Choice("HyperbandPruner", ("min_resource", "max_resource", "reduction_factor", "bootstrap_count")),
    "threshold": Choice("ThresholdPruner", ("lower", "upper", "n_warmup_steps", "interval_steps")),
    "wilcoxon": Choice("WilcoxonPruner", ("p_threshold", "n_startup_steps")),
    "none": Choice("NopPruner"),
}
TABLES = {"sampler": SAMPLERS, "pruner": PRUNERS}


def setting_error(key: str) -> str | None:
    """One line for a ``hydra.sweeper.<key>`` the sweeper does not have (None when it has it)."""
    name = key.removeprefix("hydra.sweeper.").split(".")[0]
    if name in SETTINGS:
        return None
    close = difflib.get_close_matches(name, SETTINGS, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"hydra.sweeper.{name}: the Optuna sweeper has no such setting; {hint}allowed: {', '.join(SETTINGS)}"


def choice_error(kind: str, name: str) -> str:
    """One line for ``hydra/sweeper/<kind>=<name>`` naming an option that does not exist."""
    return f"hydra/sweeper/{kind}={name}: unknown {kind}; allowed: {', '.join(TABLES[kind])}"


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="nnlab_optuna", node=NnlabOptunaSweeperConf, provider="nnlab_optuna_sweeper")
for kind, table in TABLES.items():
    for name, choice in table.items():
        node = {"_target_": f"optuna.{kind}s.{choice.cls}", **dict.fromkeys(choice.arguments)}
        store.store(group=f"hydra/sweeper/{kind}", name=name, node=node, provider="nnlab_optuna_sweeper")
