"""Composing the Hydra config, checking it before Hydra runs, and the Hydra entry point."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nnlab.config.paths import check_writable, conf_dir, register_resolvers
from nnlab.config.process import exit_now
from nnlab.config.schema import ConfigError, allowed_keys, validate
from nnlab.errors import fail, one_line, report
from nnlab.tracking.credentials import override_credentials_to_environment


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    """The composed config (as @hydra.main would build it), for tests and pre-checks."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def precheck(prog: str, argv: list[str]) -> None:
    """Compose and validate the command line before Hydra runs it, so a bad key, type or value
    gives one line naming the key (Hydra's own messages span several). Sweeps are checked per job."""
    if any(a in ("-m", "--multirun") for a in argv):
        problem = sweep_problem([a for a in argv if ("=" in a or a.startswith("~")) and not a.startswith("-")])
        if problem:
            fail(prog, f"config: {problem}")
        return
    if any(a.startswith("-") for a in argv):
        return
    try:
        cfg = compose_config(argv)
        validate(cfg)
        check_writable(cfg.paths.log_dir, "paths.log_dir")  # Hydra creates its run folder there
    except ConfigError as exc:
        report(prog, exc)
    except (HydraException, OmegaConfBaseException) as exc:
        key = getattr(exc.__cause__, "full_key", None) or getattr(exc, "full_key", None)
        fail(prog, f"config: {one_line(exc)}{_allowed_hint(str(key), argv) if key else ''}")


def sweep_problem(overrides: list[str]) -> str | None:
    """What stops a sweep before its first job, in one line: an override that cannot be read
    (``choice()``), or the sweep's settings with its fixed values (a misspelt ``hydra.sweeper``
    key, a sampler that does not exist). The values swept are each job's to check."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import MissingConfigException, OverrideParseException

    from hydra_plugins.nnlab_optuna_sweeper.config import TABLES, choice_error, setting_error

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("See ")]
        return f"{exc.override}: {lines[-1].rpartition(': ')[2] if lines else exc}"
    fixed = [text for text, o in zip(overrides, parsed) if not o.is_sweep_override()]
    for o in parsed:
        kind = o.key_or_group.removeprefix("hydra/sweeper/")
        if kind in TABLES and not o.is_sweep_override() and o.value() not in TABLES[kind]:
            return choice_error(kind, str(o.value()))
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="train", overrides=fixed, return_hydra_config=True)
    except MissingConfigException as exc:
        return one_line(exc).split(" Available options")[0]
    except (HydraException, OmegaConfBaseException) as exc:
        key = str(getattr(exc.__cause__, "full_key", None) or getattr(exc, "full_key", None) or "")
        if key.startswith("hydra.sweeper.") and "NnlabOptunaSweeperConf" in one_line(exc):
            return setting_error(key) or one_line(exc)
        return one_line(exc)
    if cfg.hydra.sweeper.get("_target_", "").endswith("NnlabOptunaSweeper"):
        for key in cfg.hydra.sweeper:
            if not str(key).startswith("_") and setting_error(str(key)):
                return setting_error(str(key))
    return None


def _allowed_hint(key: str, argv: list[str]) -> str:
    try:
        choices = [a for a in argv if "." not in a.split("=")[0]]
        return f"; allowed keys: {allowed_keys(key, compose_config(choices))}"
    except Exception:  # the hint is a courtesy: the error itself is already known
        return ""


HELP_FLAGS = ("--help", "-h")


def config_groups() -> dict[str, list[str]]:
    """conf/'s groups and their options, from the folder (no composition)."""
    root = conf_dir()
    groups: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.yaml")):
        group = path.parent.relative_to(root).as_posix()
        if group != ".":
            groups.setdefault(group, []).append(path.stem)
    return groups


def help_text(prog: str, argv: list[str]) -> str:
    """What ``--help`` prints: the command, the config groups and the config these overrides
    compose. Hydra's own --help formats every group by composing the whole repository once per
    group (seconds); this reads the folder and composes once. ``--hydra-help`` is Hydra's."""
    doc = (importlib.import_module(prog).__doc__ or "").strip()
    lines = [
        f"usage: python -m {prog} [key=value ...] [group=option ...] [-m] [--cfg job] [--info] [--hydra-help]",
        "",
        doc,
        "",
        "Config groups (conf/; pick one with group=option):",
    ]
    lines += [f"  {group}: {', '.join(options)}" for group, options in config_groups().items()]
    overrides = [a for a in argv if a not in HELP_FLAGS and not a.startswith("-")]
    try:
        config = OmegaConf.to_yaml(compose_config(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        config = f"(cannot compose {' '.join(overrides)}: {one_line(exc)})\n"
    lines += ["", f"Config{' with ' + ' '.join(overrides) if overrides else ''} (before interpolation):", "", config]
    return "\n".join(lines)


def hydra_main(prog: str, task: Callable[[DictConfig], object], quick_exit: bool = False) -> None:
    """Run ``task`` as ``@hydra.main`` would, after the checks: credentials out of the command
    line (Hydra copies it into .hydra/ and the run's config) and one-line config errors.
    ``quick_exit``: a single run that finished leaves through ``exit_now`` (sweeps never do:
    their launchers' workers are shut down by the interpreter's own exit)."""
    if any(a in HELP_FLAGS for a in sys.argv[1:]):
        print(help_text(prog, [override_credentials_to_environment(a) for a in sys.argv[1:]]))
        sys.exit(0)
    import hydra

    sys.argv[1:] = [override_credentials_to_environment(a) for a in sys.argv[1:]]
    register_resolvers()
    precheck(prog, sys.argv[1:])
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    single = []

    @functools.wraps(task)  # Hydra names the job (hydra.job.name) after the task's own module
    def run(cfg: DictConfig) -> object:
        single.append(HydraConfig.get().mode == RunMode.RUN)
        return task(cfg)

    hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")(run)()
    if quick_exit and single == [True]:
        exit_now()
