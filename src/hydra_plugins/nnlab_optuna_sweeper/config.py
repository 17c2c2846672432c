"""The sweeper's settings (``hydra.sweeper.*``), registered as ``hydra/sweeper=nnlab_optuna``, and
its samplers and pruners as the groups ``hydra/sweeper/sampler`` and ``hydra/sweeper/pruner``
(as hydra-optuna-sweeper does): ``hydra/sweeper/pruner=threshold hydra.sweeper.pruner.upper=0.5``.

A sampler's or pruner's keys are its Optuna constructor arguments; null means Optuna's default.
Values are checked when a search starts, each failure one line naming the key (so every field is
typed ``Any`` here: Hydra's own type errors span several lines).
"""

# No `from __future__ import annotations`: Hydra executes this module before it is in sys.modules,
# and dataclasses then cannot resolve string annotations.
from dataclasses import dataclass, field
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
    sampler: Any = MISSING  # from hydra/sweeper/sampler (MISSING: the group's node, not null, wins)
    pruner: Any = MISSING  # from hydra/sweeper/pruner
    # The search space: key -> choice(...), range(...), interval(...), tag(log, interval(...)),
    # tag(int, interval(...)), or a fixed value.
    params: Any = field(default_factory=dict)
    # Set by the sweeper for each job (study, trial, trial_id, storage, threads); leave it null.
    job: Any = None


def _node(target: str, *arguments: str) -> dict[str, Any]:
    return {"_target_": target, **dict.fromkeys(arguments)}


SAMPLERS = {
    "tpe": _node(
        "optuna.samplers.TPESampler",
        *("seed", "n_startup_trials", "n_ei_candidates", "multivariate", "group", "constant_liar"),
        *("consider_prior", "prior_weight", "consider_magic_clip", "consider_endpoints", "warn_independent_sampling"),
    ),
    "random": _node("optuna.samplers.RandomSampler", "seed"),
    "cmaes": _node(
        "optuna.samplers.CmaEsSampler",
        *("seed", "x0", "sigma0", "n_startup_trials", "warn_independent_sampling", "consider_pruned_trials"),
        *("restart_strategy", "popsize", "inc_popsize", "use_separable_cma", "with_margin", "lr_adapt"),
    ),
    "qmc": _node(
        "optuna.samplers.QMCSampler",
        *("seed", "qmc_type", "scramble", "warn_asynchronous_seeding", "warn_independent_sampling"),
    ),
    "gp": _node(
        "optuna.samplers.GPSampler", "seed", "n_startup_trials", "deterministic_objective", "warn_independent_sampling"
    ),
    "nsgaii": _node(
        "optuna.samplers.NSGAIISampler", "seed", "population_size", "mutation_prob", "crossover_prob", "swapping_prob"
    ),
}
PRUNERS = {
    "median": _node(
        "optuna.pruners.MedianPruner", "n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"
    ),
    "percentile": _node(
        "optuna.pruners.PercentilePruner",
        *("percentile", "n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    ),
    "successive_halving": _node(
        "optuna.pruners.SuccessiveHalvingPruner",
        *("min_resource", "reduction_factor", "min_early_stopping_rate", "bootstrap_count"),
    ),
    "hyperband": _node(
        "optuna.pruners.HyperbandPruner", "min_resource", "max_resource", "reduction_factor", "bootstrap_count"
    ),
    "threshold": _node("optuna.pruners.ThresholdPruner", "lower", "upper", "n_warmup_steps", "interval_steps"),
    "wilcoxon": _node("optuna.pruners.WilcoxonPruner", "p_threshold", "n_startup_steps"),
    "none": _node("optuna.pruners.NopPruner"),
}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="nnlab_optuna", node=NnlabOptunaSweeperConf, provider="nnlab_optuna_sweeper")
for group, nodes in (("hydra/sweeper/sampler", SAMPLERS), ("hydra/sweeper/pruner", PRUNERS)):
    for name, node in nodes.items():
        store.store(group=group, name=name, node=node, provider="nnlab_optuna_sweeper")
