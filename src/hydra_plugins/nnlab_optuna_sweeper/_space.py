"""The search space: ``hydra.sweeper.params`` and the sweeps of the command line, written in
Hydra's override grammar, as Optuna distributions.

- ``choice(a, b, ...)`` (or ``a,b``): categorical; a choice may be a list (``choice([64], [128, 64])``)
  or a config group option (``optimizer: choice(adam, sgd)``).
- ``interval(low, high)``: uniform float; ``tag(log, interval(...))`` log-uniform;
  ``tag(int, interval(...))`` integers (with ``log`` too).
- ``range(start, stop, step)``: the numbers a grid sweep would take (``stop`` excluded), as an
  integer (or stepped float) distribution.
- anything else is a fixed value, passed to every trial.

The command line wins over the config for a key: a sweep there joins (or replaces) the search
space, a fixed value there takes the key out of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from .study import SearchError

TAGS = {"log", "int"}


@dataclass
class Param:
    """One searched key: its Optuna distribution and how a sampled value is written back."""

    key: str  # the override's key as written (optimizer.lr, +extra.key, optimizer)
    name: str  # the parameter's name in the study (the key without + or ~)
    distribution: BaseDistribution
    texts: dict[Any, str] = field(default_factory=dict)  # categorical choice -> its override text

    def override(self, value: Any) -> str:
        if isinstance(self.distribution, CategoricalDistribution):
            return f"{self.key}={self.texts[value]}"
        return f"{self.key}={value!r}" if isinstance(value, float) else f"{self.key}={value}"

    def suggest(self, trial) -> Any:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(self.name, d.choices)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.name, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_float(self.name, d.low, d.high, step=d.step, log=d.log)


def _parse(text: str, where: str) -> Override:
    try:
        return OverridesParser.create().parse_overrides([text])[0]
    except Exception as exc:  # Hydra's parse errors span lines; the second names the problem
        lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("See ")]
        raise SearchError(f"{where}: cannot read {text!r}: {lines[-1] if lines else exc}") from None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _interval(sweep: IntervalSweep, where: str) -> BaseDistribution:
    low, high = float(sweep.start), float(sweep.end)
    text = f"interval({_number(low)}, {_number(high)})"
    log = "log" in sweep.tags
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SearchError(f"{where}: {text} needs finite bounds with low < high")
    if log and low <= 0:
        raise SearchError(f"{where}: tag(log, {text}) needs low > 0 (a log scale), got {_number(low)}")
    if "int" in sweep.tags:
        if not (low.is_integer() and high.is_integer()):
            raise SearchError(f"{where}: tag(int, {text}) needs whole-number bounds")
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(low, high, log=log)


def _range(sweep: RangeSweep, where: str) -> BaseDistribution:
    if "log" in sweep.tags:
        raise SearchError(f"{where}: range(...) has no log scale; use tag(log, interval(low, high))")
    values = list(sweep.range())
    if not values:
        raise SearchError(f"{where}: range({sweep.start}, {sweep.stop}, {sweep.step}) is empty")
    low, high, step = min(values), max(values), abs(sweep.step)
    if len(values) == 1:
        return CategoricalDistribution([values[0]])
    if all(isinstance(v, int) for v in values) and isinstance(sweep.step, int):
        return IntDistribution(int(low), int(high), step=int(step))
    return FloatDistribution(float(low), float(low + step * (len(values) - 1)), step=float(step))


def _choice(sweep: ChoiceSweep, where: str) -> tuple[BaseDistribution, dict[Any, str]]:
    texts: dict[Any, str] = {}
    for item in sweep.list:
        key = Transformer.encode(item)  # numbers, strings and booleans stay; lists become their text
        if key in texts:
            raise SearchError(f"{where}: choice(...) lists {Transformer.str(item)} twice")
        texts[key] = Transformer.str(item)
    if not texts:
        raise SearchError(f"{where}: choice() needs at least one value")
    return CategoricalDistribution(list(texts)), texts


def _to_param(override: Override, where: str) -> Param | None:
    """The override's distribution, or None for a fixed value."""
    if not override.is_sweep_override():
        return None
    sweep = override.value()
    unknown = set(sweep.tags) - TAGS
    if unknown:
        raise SearchError(f"{where}: unknown tag {sorted(unknown)[0]!r}; allowed: log, int")
    key, name = override.get_key_element(), override.key_or_group
    if isinstance(sweep, IntervalSweep):
        return Param(key, name, _interval(sweep, where))
    if isinstance(sweep, RangeSweep):
        if sweep.shuffle:
            values = list(sweep.range())
            return Param(key, name, CategoricalDistribution(values), {v: _number(v) for v in values})
        return Param(key, name, _range(sweep, where))
    if isinstance(sweep, ChoiceSweep):
        if sweep.tags:
            raise SearchError(f"{where}: tags apply to interval(...), not to choice(...)")
        return Param(key, name, *_choice(sweep, where))
    raise SearchError(f"{where}: {type(sweep).__name__} cannot be searched; use choice, range or interval")


def search_space(params: Mapping[str, Any] | None, arguments: list[str]) -> tuple[list[Param], list[str]]:
    """(the searched parameters, the fixed overrides every trial gets)."""
    searched: dict[str, Param] = {}
    fixed: dict[str, str] = {}
    for key, value in (params or {}).items():
        where = f"hydra.sweeper.params.{key}"
        text = f"{key}={value if isinstance(value, str) else Transformer.str(value)}"
        override = _parse(text, where)
        param = _to_param(override, where)
        if param:
            searched[override.key_or_group] = param
        else:
            fixed[override.key_or_group] = text
    for argument in arguments:
        override = _parse(argument, argument)
        param = _to_param(override, argument)
        name = override.key_or_group
        if param:
            searched[name] = param
            fixed.pop(name, None)
        else:
            searched.pop(name, None)
            fixed[name if not override.is_delete() else f"~{name}"] = argument
    return list(searched.values()), list(fixed.values())
