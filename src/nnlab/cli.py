"""Shared plumbing of the Hydra entry points: config checks with one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from nnlab.config import ConfigError, allowed_keys, validate
from nnlab.paths import find_root  # importing it registers the ${nnlab_root:} resolver
from nnlab.tracking.credentials import strip_override


def _conf_dir() -> Path:
    """The project's conf/ (where a DVC stage or a test runs), else the one beside this package."""
    here = find_root() / "conf"
    return here if (here / "train.yaml").is_file() else Path(__file__).resolve().parents[2] / "conf"


CONF_DIR = _conf_dir()


def fail(prog: str, message: str, code: int = 2) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    """The composed config (as @hydra.main would build it), for tests and pre-checks."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def _one_line(exc: BaseException) -> str:
    parts = [str(exc)] + ([str(exc.__cause__)] if exc.__cause__ else [])
    lines = [line.strip() for part in parts for line in part.splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(("full_key", "object_type")))


def precheck(prog: str, argv: list[str]) -> None:
    """Compose and validate the command line before Hydra runs it, so a bad key, type or value
    gives one line naming the key (Hydra's own messages span several). Sweeps are checked per job."""
    if any(a in ("-m", "--multirun") or a.startswith("-") for a in argv):
        return
    try:
        cfg = compose_config(argv)
        validate(cfg)
    except ConfigError as exc:
        fail(prog, f"config: {exc}")
    except (HydraException, OmegaConfBaseException) as exc:
        cause = exc.__cause__
        key = getattr(cause, "full_key", None) or getattr(exc, "full_key", None)
        hint = ""
        if key:
            try:
                choices = [a for a in argv if "." not in a.split("=")[0]]
                hint = f"; allowed keys: {allowed_keys(str(key), compose_config(choices))}"
            except Exception:
                hint = ""
        fail(prog, f"config: {_one_line(exc)}{hint}")


def run_main(prog: str, hydra_main: Callable[[], object]) -> None:
    # Before Hydra sees the command line: it copies it into .hydra/ and the run's config.
    sys.argv[1:] = [strip_override(a) for a in sys.argv[1:]]
    precheck(prog, sys.argv[1:])
    hydra_main()
