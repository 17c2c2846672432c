"""Composing the Hydra config, checking it before Hydra runs, and the Hydra entry point."""

from __future__ import annotations

import sys
from collections.abc import Callable

from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from nnlab.config.errors import fail, one_line
from nnlab.config.paths import conf_dir, register_resolvers
from nnlab.config.schema import ConfigError, allowed_keys, validate
from nnlab.tracking.credentials import strip_override


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    """The composed config (as @hydra.main would build it), for tests and pre-checks."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def precheck(prog: str, argv: list[str]) -> None:
    """Compose and validate the command line before Hydra runs it, so a bad key, type or value
    gives one line naming the key (Hydra's own messages span several). Sweeps are checked per job."""
    if any(a in ("-m", "--multirun") or a.startswith("-") for a in argv):
        return
    try:
        validate(compose_config(argv))
    except ConfigError as exc:
        fail(prog, f"config: {exc}")
    except (HydraException, OmegaConfBaseException) as exc:
        key = getattr(exc.__cause__, "full_key", None) or getattr(exc, "full_key", None)
        fail(prog, f"config: {one_line(exc)}{_allowed_hint(str(key), argv) if key else ''}")


def _allowed_hint(key: str, argv: list[str]) -> str:
    try:
        choices = [a for a in argv if "." not in a.split("=")[0]]
        return f"; allowed keys: {allowed_keys(key, compose_config(choices))}"
    except Exception:  # the hint is a courtesy: the error itself is already known
        return ""


def hydra_main(prog: str, task: Callable[[DictConfig], object]) -> None:
    """Run ``task`` as ``@hydra.main`` would, after the checks: credentials out of the command
    line (Hydra copies it into .hydra/ and the run's config) and one-line config errors."""
    import hydra

    sys.argv[1:] = [strip_override(a) for a in sys.argv[1:]]
    register_resolvers()
    precheck(prog, sys.argv[1:])
    hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")(task)()
