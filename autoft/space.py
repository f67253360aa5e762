"""Search spaces: a YAML file in search_spaces/ into a `SearchSpace` that samples a trial's params.

Each parameter is fixed (`value`), a range (`low`/`high`, optionally `log`), or a list of
`choices`; `default` gives trial 0, and `starts` lists further known-good configs tried first.
A parameter with `when: {other: value}` applies only in trials where `other` took that value: it is
sampled after it (define-by-run) and is absent from the other trials' params.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import optuna
import yaml

from autoft.adapters import SEARCH_PARAMETERS
from autoft.errors import UsageError
from autoft.params import COMMON_PARAMETERS, LATE_PARAMETERS

# Package data: autoft/search_spaces links to the top-level search_spaces/, so a checkout, an
# editable install and a wheel all read the same files.
SPACES_DIR = files("autoft") / "search_spaces"
COMMON_NAMES = {spec.name for spec in (*COMMON_PARAMETERS, *LATE_PARAMETERS)}
# Everything below is derived from the parameters' declarations (autoft.params, each adapter's
# module), in the order trials sample them.
PARAMETERS = tuple(spec.name for spec in SEARCH_PARAMETERS)
# Parameters a space file may leave out, with the value they then keep: a common one's default
# (preserve_weight 0, the method off; adapter freeze, as autoft always trained; no LP-FT), or None
# for an adapter's own: absent from trials' params, the adapter trains with its declared default.
OPTIONAL_PARAMETERS = {
    spec.name: (spec.default if spec.name in COMMON_NAMES else None)
    for spec in SEARCH_PARAMETERS if spec.default is not None
}
INTEGER_PARAMETERS = tuple(spec.name for spec in SEARCH_PARAMETERS if spec.kind is int)
POSITIVE_PARAMETERS = tuple(spec.name for spec in SEARCH_PARAMETERS if spec.positive)
# Parameters whose values come from a fixed set of words, with the words each takes.
WORD_PARAMETERS = {spec.name: spec.choices for spec in SEARCH_PARAMETERS if spec.kind is str}
# The mixing weights every trial's curve scores (top-level `interpolation_mixes`; [] turns it off).
DEFAULT_MIXES = (0.25, 0.5, 0.75)
# A space of at most this many configs (all discrete) is searched without repeats.
MAX_LISTED_CONFIGS = 1000
# Words trainable_layers may use for a model whose depth is known only once it is loaded:
# every layer, or the top half (rounded up).
DEPTH_WORDS = {"max": lambda depth: depth, "half": lambda depth: (depth + 1) // 2}


def in_layers(value: Any, depth: int) -> Any:
    """A depth word as a number of layers for a model `depth` blocks deep; numbers unchanged."""
    return DEPTH_WORDS[value](depth) if isinstance(value, str) and value in DEPTH_WORDS else value


@dataclass(frozen=True)
class Parameter:
    """One searched or fixed parameter; for layers a value may be 'max' or 'half' (DEPTH_WORDS)."""

    name: str
    value: Any = None
    low: Any = None
    high: Any = None
    log: bool = False
    choices: tuple | None = None
    default: Any = None
    when: tuple[tuple[str, Any], ...] = ()

    def applies(self, values: dict[str, Any]) -> bool:
        """Whether this parameter is part of a trial whose earlier parameters took `values`."""
        return all(values.get(name) == value for name, value in self.when)

    def can_take(self, value: Any) -> bool:
        """Whether some trial may give this parameter `value`."""
        if self.value is not None:
            return value == self.value
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def resolve(self, depth: int) -> Parameter:
        """Replace the depth words by numbers of layers for a model of this depth."""
        keys = ("value", "low", "high", "default")
        swap = {key: in_layers(getattr(self, key), depth) for key in keys}
        return Parameter(**{**self.__dict__, **swap})

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask the trial for a value, or return the fixed one."""
        if self.value is not None:
            return self.value
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.name in INTEGER_PARAMETERS:
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def discrete_values(self) -> tuple | None:
        """Every value this parameter can take, or None where a float range makes them endless."""
        if self.value is not None:
            return (self.value,)
        if self.choices is not None:
            return tuple(self.choices)
        if self.name in INTEGER_PARAMETERS:
            return tuple(range(self.low, self.high + 1))
        return (self.low,) if self.low == self.high else None

    def fallback(self) -> Any:
        """The default when the file gives none: the fixed value, the first choice, the middle."""
        if self.default is not None:
            return self.default
        if self.value is not None:
            return self.value
        if self.choices is not None:
            return self.choices[0]
        if self.log:
            middle = (self.low * self.high) ** 0.5
        else:
            middle = (self.low + self.high) / 2
        return round(middle) if self.name in INTEGER_PARAMETERS else middle


@dataclass(frozen=True)
class SearchSpace:
    """The searched parameters of one study, resolved for a model of a given depth."""

    source: str
    parameters: tuple[Parameter, ...]
    starts: tuple[dict[str, Any], ...] = ()
    mixes: tuple[float, ...] = DEFAULT_MIXES

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Define-by-run sampling: the value of every parameter that applies to this trial."""
        values: dict[str, Any] = {}
        for parameter in self.parameters:
            if parameter.applies(values):
                values[parameter.name] = parameter.suggest(trial)
        return values

    def lowest(self, name: str) -> Any:
        """The smallest value a parameter can take in this space."""
        parameter = next(p for p in self.parameters if p.name == name)
        if parameter.value is not None:
            return parameter.value
        return min(parameter.choices) if parameter.choices else parameter.low

    def default_params(self) -> dict[str, Any]:
        """Trial 0: the config a careful person would try first."""
        return self.complete({})

    def complete(self, start: dict[str, Any]) -> dict[str, Any]:
        """A start config with every parameter that applies to it, the defaults filling in."""
        values: dict[str, Any] = {}
        for parameter in self.parameters:
            if parameter.applies(values):
                values[parameter.name] = start.get(parameter.name, parameter.fallback())
        return values

    def values_of(self, name: str) -> tuple:
        """Every value a fixed or listed parameter may take; () when the space lacks it."""
        parameter = next((p for p in self.parameters if p.name == name), None)
        if parameter is None:
            return ()
        return (parameter.value,) if parameter.value is not None else tuple(parameter.choices)

    def start_params(self) -> list[dict[str, Any]]:
        """The default, then each listed start that fits the space; searched values only."""
        searched = [p for p in self.parameters if p.value is None]
        configs = []
        for start in (self.default_params(), *self.starts):
            full = self.complete(start)
            if all(p.can_take(full[p.name]) for p in searched if p.name in full):
                config = {p.name: full[p.name] for p in searched if p.name in full}
                if config not in configs:
                    configs.append(config)
        return configs

    def configs(self) -> list[dict[str, Any]] | None:
        """Every config of a space of fixed values, lists and integer ranges, searched values only
        (as start_params gives them), when it holds at most MAX_LISTED_CONFIGS; None for a space
        with a float range, or more configs. TPE draws from such a space with replacement: a space
        of six configs ran one of them 4 times in 9 trials (schedule.queue_next_config)."""
        configs: list[dict[str, Any]] = [{}]
        for parameter in self.parameters:
            values = parameter.discrete_values()
            if values is None:
                return None
            grown = []
            for config in configs:
                if not parameter.applies(self.complete(config)):
                    grown.append(config)
                elif parameter.value is not None:
                    grown.append(config)
                else:
                    grown.extend({**config, parameter.name: value} for value in values)
            if len(grown) > MAX_LISTED_CONFIGS:
                return None
            configs = grown
        return configs

    def fix(self, name: str, value: Any) -> SearchSpace:
        """The same space with one parameter held at `value` (a method the study cannot use)."""
        parameters = tuple(
            Parameter(name, value=value) if p.name == name else p for p in self.parameters
        )
        return dataclasses.replace(self, parameters=parameters)

    def resolve(self, depth: int) -> SearchSpace:
        """Fix the depth words to the model's depth and check every range against it."""
        resolved = tuple(parameter.resolve(depth) for parameter in self.parameters)
        layers = next(p for p in resolved if p.name == "trainable_layers")
        values = (
            [layers.value]
            if layers.value is not None
            else (list(layers.choices) if layers.choices else [layers.low, layers.high])
        )
        too_deep = [value for value in values if value > depth]
        if too_deep:
            raise UsageError(
                f"{self.source}: trainable_layers goes up to {max(too_deep)} but the model has "
                f"only {depth} layers; lower it to at most {depth} (or write 'max')."
            )
        starts = tuple(
            {key: in_layers(value, depth) for key, value in start.items()} for start in self.starts
        )
        return dataclasses.replace(self, parameters=resolved, starts=starts)


def find_space_file(name_or_path: str) -> Path:
    """A space given as a path, or by name from search_spaces/ (default, quick, thorough)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    named = SPACES_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
    raise UsageError(
        f"Search space '{name_or_path}' is neither a file nor a name in search_spaces/; "
        f"use one of {known} or a path to a YAML file."
    )


def load_space(name_or_path: str) -> SearchSpace:
    """Read and check a space file; every problem names the file, the parameter and the fix."""
    path = find_space_file(name_or_path)
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UsageError(f"{path}: not valid YAML; fix the syntax.") from None
    if not isinstance(content, dict):
        raise UsageError(f"{path}: expected a mapping of parameters at the top.")
    starts = content.pop("starts", []) or []
    mixes = _mixes(path, content.pop("interpolation_mixes", list(DEFAULT_MIXES)))
    if "interpolate" in content or any("interpolate" in start for start in starts
                                       if isinstance(start, dict)):
        raise UsageError(
            f"{path}: 'interpolate' is no longer a parameter: every trial with a base task ends "
            f"with its interpolation curve (interpolation_mixes; [] turns it off); delete it."
        )
    unknown = sorted(set(content) - set(PARAMETERS))
    if unknown:
        raise UsageError(
            f"{path}: unknown parameter '{unknown[0]}'; use one of {', '.join(PARAMETERS)}."
        )
    for name, value in OPTIONAL_PARAMETERS.items():
        if value is not None:
            content.setdefault(name, value)
    required = [name for name in PARAMETERS if name not in OPTIONAL_PARAMETERS]
    missing = [name for name in required if name not in content]
    if missing:
        raise UsageError(f"{path}: parameter '{missing[0]}' is missing; give it a value or range.")
    parameters = tuple(
        _parse_parameter(path, name, content[name]) for name in PARAMETERS if name in content
    )
    for index, parameter in enumerate(parameters):
        _check_condition(path, parameter, parameters[:index])
    if not isinstance(starts, list) or not all(isinstance(s, dict) for s in starts):
        raise UsageError(f"{path}: 'starts' must be a list of mappings (parameter: value).")
    for start in starts:
        for key in start:
            if key not in PARAMETERS:
                raise UsageError(f"{path}: start config names unknown parameter '{key}'.")
    starts = [{key: _value(path, key, value) for key, value in start.items()} for start in starts]
    for start in starts:
        _check_start(path, parameters, start)
    return SearchSpace(str(path), parameters, tuple(starts), mixes)


def _mixes(path: Path, values: Any) -> tuple[float, ...]:
    """The interpolation grid: numbers from 0 (the untouched body) to 1 (the tuned one); an
    empty list turns the curve off."""
    numbers = values if isinstance(values, list) else None
    if numbers is None or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in numbers
    ):
        raise UsageError(
            f"{path}: interpolation_mixes must be a list of numbers from 0 to 1, not {values}; "
            f"write it like [0.25, 0.5, 0.75]."
        )
    return tuple(float(v) for v in numbers)


def _check_condition(path: Path, parameter: Parameter, earlier: tuple[Parameter, ...]) -> None:
    """A `when` must name a parameter listed before this one and a value that one can take."""
    for name, value in parameter.when:
        condition = next((p for p in earlier if p.name == name), None)
        if condition is None:
            raise UsageError(
                f"{path}: {parameter.name} applies when {name} is {value}, but the space has no "
                f"{name} before it; add {name} to the space or remove the 'when'."
            )
        if not condition.can_take(value):
            raise UsageError(
                f"{path}: {parameter.name} applies when {name} is {value}, which {name} never "
                f"takes in this space; add {value} to {name} or remove {parameter.name}."
            )


def _check_start(path: Path, parameters: tuple[Parameter, ...], start: dict[str, Any]) -> None:
    """A start may set only parameters of the space whose `when` holds under its own values (or
    the defaults it leaves alone)."""
    by_name = {parameter.name: parameter for parameter in parameters}
    for key in start:
        holds = key in by_name and all(
            start.get(name, by_name[name].fallback()) == value for name, value in by_name[key].when
        )
        if not holds:
            raise UsageError(
                f"{path}: start config {start} sets {key}, which does not apply to it (the space "
                f"lacks it, or its 'when' does not hold); remove {key} from that start."
            )


def _value(path: Path, name: str, value: Any) -> Any:
    """A parameter's value as the space file gives it: a word where the parameter takes words,
    else a number."""
    if name not in WORD_PARAMETERS:
        return _number(path, name, value)
    if value not in WORD_PARAMETERS[name]:
        raise UsageError(
            f"{path}: {name} value '{value}' is unknown; use one of "
            f"{', '.join(map(str, WORD_PARAMETERS[name]))}."
        )
    return value


def _number(path: Path, name: str, value: Any) -> Any:
    """YAML reads 1e-5 as a string; accept it as the number it means."""
    if name == "trainable_layers" and isinstance(value, str) and value in DEPTH_WORDS:
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise UsageError(f"{path}: {name} value '{value}' is not a number; fix it.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{path}: {name} value '{value}' is not a number; fix it.")
    if name in POSITIVE_PARAMETERS and value <= 0:
        raise UsageError(f"{path}: {name} must be positive, not {value}; use a value above 0.")
    if name in INTEGER_PARAMETERS:
        if float(value) != int(value):
            raise UsageError(f"{path}: {name} must be a whole number, not {value}.")
        return int(value)
    return float(value)


def _parse_when(path: Path, name: str, spec: Any) -> tuple[tuple[str, Any], ...]:
    """`when: {adapter: lora}` as ((adapter, lora),), each value checked as its parameter's."""
    if spec is None:
        return ()
    if not isinstance(spec, dict) or not spec:
        raise UsageError(
            f"{path}: {name}.when must map a parameter to a value, as in when: {{adapter: lora}}."
        )
    unknown = sorted(set(spec) - set(PARAMETERS))
    if unknown:
        raise UsageError(
            f"{path}: {name}.when names unknown parameter '{unknown[0]}'; use one of "
            f"{', '.join(PARAMETERS)}."
        )
    return tuple((key, _value(path, key, value)) for key, value in spec.items())


def _parse_parameter(path: Path, name: str, spec: Any) -> Parameter:
    parameter = _read_parameter(path, name, spec)
    if name == "preserve_weight":
        values = [parameter.value, parameter.low, parameter.high, *(parameter.choices or ())]
        negative = [v for v in values if isinstance(v, (int, float)) and v < 0]
        if negative:
            raise UsageError(
                f"{path}: preserve_weight {negative[0]} is negative; use 0 (off) or more, "
                f"like choices [0, 0.3, 1, 3]."
            )
    return parameter


def _read_parameter(path: Path, name: str, spec: Any) -> Parameter:
    if not isinstance(spec, dict):
        return Parameter(name, value=_value(path, name, spec))
    unknown = sorted(set(spec) - {"value", "low", "high", "log", "choices", "default", "when"})
    if unknown:
        raise UsageError(
            f"{path}: {name} has unknown key '{unknown[0]}'; use value, low/high (+log), choices, "
            f"default or when."
        )
    when = _parse_when(path, name, spec.get("when"))
    default = _value(path, name, spec["default"]) if "default" in spec else None
    if "value" in spec:
        return Parameter(name, value=_value(path, name, spec["value"]), default=default, when=when)
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{path}: {name}.choices must be a non-empty list.")
        return Parameter(
            name, choices=tuple(_value(path, name, c) for c in choices), default=default, when=when
        )
    if name in WORD_PARAMETERS:
        raise UsageError(
            f"{path}: {name} takes words, not a range; give value or choices from "
            f"{', '.join(map(str, WORD_PARAMETERS[name]))}."
        )
    if "low" not in spec or "high" not in spec:
        raise UsageError(f"{path}: {name} needs value, choices, or both low and high.")
    low, high = _number(path, name, spec["low"]), _number(path, name, spec["high"])
    log = bool(spec.get("log", False))
    comparable = not {low, high} & set(DEPTH_WORDS)
    if comparable and low > high:
        raise UsageError(
            f"{path}: {name} has low {low} above high {high}; swap them (low is the smaller)."
        )
    if log and comparable and low <= 0:
        raise UsageError(f"{path}: {name} is on a log scale, so low must be above 0, not {low}.")
    return Parameter(name, low=low, high=high, log=log, default=default, when=when)
