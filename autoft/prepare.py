"""Preparing a study once: read and tokenize the data, load the model to learn its depth, resolve
the search space, and keep it all in the study folder so workers and resumes reuse it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import torch

from autoft.adapters import get_adapter
from autoft.config import AUTO, GENERAL_TEXT, StudyConfig, data_setting_names
from autoft.describe import percent
from autoft.errors import UsageError
from autoft.files import write_text_whole
from autoft.forgetting import (
    KINDS,
    BaseSplit,
    default_check,
    find_pair_columns,
    kinds_for,
    preservation_texts,
    study_base_task,
)
from autoft.guard import BASE_MAX_LENGTH, COIN_FLIP, measure_base, observe, widths_at_bar
from autoft.model import model_depth, quiet_transformers
from autoft.precision import autocast, set_precision
from autoft.prepared import (
    Prepared,
    PreparedData,
    load_prepared_data,
    prepared_folder,
    save_prepared,
)
from autoft.preserve import PreservedTexts, texts_to_preserve
from autoft.space import SPACES_DIR, SearchSpace, load_space
from autoft.storage import check_same_inputs, recorded_inputs
from autoft.study_folder import (
    check_identity,
    check_own_database,
    claim,
    read_identity,
    remember,
)
from autoft.tasks import DataSettings, Preserving, Task, detect_task, get_task
from autoft.tasks.text import model_length_limit

# What shapes the prepared data: the task, the model and every data setting.
DATA_FIELDS = ("task", "model", *data_setting_names())
HASHES_FILE = "file_hashes.json"
DECISIVE = 0.03  # the paired 95% interval of retention at the bar a check is sized for: ± this
CHECK_SIZES = (32, 64, 128)  # the sizes tried, and SIZING_UNITS
SIZING_UNITS = 200  # units the stand-in is measured on: 3 passes over them, 17 s for MiniLM
NO_SKILL_SPREAD = 1.0  # a base score whose 95% interval's half-width is this share of it: noise
QUICK_CAP = 128  # units at most in the check at every evaluation: its cost is paid each time


def _file_digest(path: Path, known: dict) -> str:
    """sha256 of a file's content, taken from `known` while its size and modification and change
    times are those recorded with it (the fast path), computed and recorded otherwise. The change
    time is in the stamp because an edit can keep size and modification time (`cp -p`, `touch
    -r`), but no write keeps the change time."""
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    record = known.get(str(path))
    if record and record[:-1] == stamp:
        return record[-1]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    known[str(path)] = [*stamp, digest.hexdigest()]
    return digest.hexdigest()


def _content_identity(value: str | None, known: dict) -> object:
    """A data file or model folder by its content (a folder: every file in it but hidden ones),
    so a file written again with the same content is the same input; a hub name as written."""
    if value is None or not Path(value).exists():
        return value
    path = Path(value).resolve()
    if path.is_file():
        return _file_digest(path, known)
    files = sorted(
        file for file in path.rglob("*")
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts)
    )
    return [[str(file.relative_to(path)), _file_digest(file, known)] for file in files]


def data_fingerprint(config: StudyConfig, known: dict) -> str:
    """Identifies the prepared data: the settings that shape it and the content it came from
    (content hashes reused from and added to `known`, see `_file_digest`), the base task's too:
    the base model's skill is measured once, on those files, and kept with the prepared data.
    The bar (min_retention) is not part of it: it judges trials, it does not shape what they
    train or are measured on."""
    identity = {name: getattr(config, name) for name in DATA_FIELDS}
    if identity["label_columns"] is None:  # unset, so studies from before it keep theirs
        del identity["label_columns"]
    for name in ("model", "train", "validation"):
        identity[name] = _content_identity(getattr(config, name), known)
    if config.base and config.base.data == GENERAL_TEXT:  # the default check: chosen by
        # autoft from the task and model (kind, sizes), as a worker's recorded config holds it
        identity["base"] = {"kind": AUTO, "data": _content_identity(GENERAL_TEXT, known)}
    elif config.base:
        base = dataclasses.asdict(config.base)
        base.pop("min_retention")
        for name in ("data", "ratings", "preserve_data"):
            base[name] = _content_identity(base[name], known)
        identity["base"] = base
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def model_identity(model: str, known: dict) -> str:
    """The model alone by its content (data_fingerprint covers it among the rest): what export
    and report check the model folder against before they build on it or run its code."""
    return hashlib.sha256(json.dumps(_content_identity(model, known)).encode()).hexdigest()[:16]


def load_hashes(folder: Path) -> dict:
    """The content hashes recorded by an earlier run (none if the record is missing or damaged)."""
    try:
        known = json.loads((folder / HASHES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _save_hashes(folder: Path, known: dict) -> None:
    write_text_whole(folder / HASHES_FILE, json.dumps(known))  # workers may write it at once


def measure_base_skill(config: StudyConfig, model, tokenizer, echo) -> dict:
    """The untouched model's base-task score, measured once and kept with the study, in the
    study's precision as the checks will be (guard.observe)."""
    set_precision(config.precision)
    source = Path(config.base.data).name
    echo(f"Measuring the base model's {config.base.kind} skill on {source} ...")
    limit = min(BASE_MAX_LENGTH, model_length_limit(tokenizer, model.config))
    task = study_base_task(config, tokenizer, limit)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    base = measure_base(task, model.to(device), config.base, device) | {
        "max_length": limit, "sizes": [config.base.max_examples, config.base.check_examples]}
    echo(f"  base {task.name}: {base['score']:.4f} ({task.measures})")
    if task.higher_is_better and base["spread"] >= NO_SKILL_SPREAD:
        base["noise"] = (f"the base model's {task.name} on {source}, {base['score']:.3f}, is "
                         f"within its noise of no skill at all (its 95% interval reaches 0), so "
                         f"a share of it kept means nothing")
        echo(f"  warning: {base['noise']}; retention is not stated. Give base data the model "
             f"has a skill on, or --base-kind none.")
    split = task.split_
    echo(f"  {split.note}" if split.note else
         f"  held back {len(split.audit)} of {split.total} {split.unit} for the final audit")
    if base["quick_spread"] > COIN_FLIP:
        echo(coin_flip_warning(config, base, task.units_["quick"], split.unit))
    return base


def coin_flip_warning(config: StudyConfig, base: dict, units: int, unit: str) -> str:
    """One sentence for a base set too small to decide at the bar: the fixes, in words."""
    bar = config.base.min_retention
    return (
        f"  warning: the quick check reads {units} {unit} of {Path(config.base.data).name}, and "
        f"the base score on them moves ±{base['quick_spread']:.0%} between resamples of them, "
        f"more than the {COIN_FLIP:.0%} between the bar ({percent(bar)}) and "
        f"{percent(bar - COIN_FLIP)}: "
        f"decisions at the bar are closer to a coin flip than a measurement, so trials are "
        f"stopped for forgetting only when clearly below it; give more base items, or raise "
        f"base.check_examples and base.max_examples."
    )


def held_without_preservation(space, preserved: PreservedTexts, echo):
    """The space, with preserve_weight held at 0 where there is nothing to preserve (no base
    task, or a task without the preservation loss); where the weight may be above 0, which texts
    the study preserves on, said on screen."""
    weight = next(p for p in space.parameters if p.name == "preserve_weight")
    if weight.value == 0:
        return space
    if preserved.texts:
        echo(f"  preserve_weight > 0 preserves on {preserved.words}.")
        return space
    echo(f"  preserve_weight held at 0: {preserved.words}.")
    return space.fix("preserve_weight", 0.0)


def preserving(config: StudyConfig, task: Task, data, base: dict | None,
               processor) -> PreservedTexts:
    """The texts the study preserves on (preserve.texts_to_preserve), recorded in the base facts
    (`preserve_on`) for the report; `processor` is loaded here when the data was prepared
    earlier and the task's own texts may be needed."""
    split = BaseSplit.from_dict(base["split"]) if base else None
    if processor is None and config.base and isinstance(task, Preserving):
        processor = task.load_processor(config.model, config.trust_remote_code)
    preserved = texts_to_preserve(config.base, split, data, task, processor, config.seed)
    if base is not None and preserved.texts:
        base["preserve_on"] = preserved.facts()
    return preserved


def checked_adapter(space: SearchSpace, name: str, model, echo) -> SearchSpace:
    """The space, if adapter `name` fits the model; a space autoft ships that offers it anyway
    (the default offers LoRA, which a ResNet's convolutions cannot take) holds the adapter at
    freeze and says so; a space file of the user's that asks for it is refused."""
    try:
        get_adapter(name).check(model, space.source)
    except UsageError:
        if Path(space.source).parent != Path(str(SPACES_DIR)):
            raise
        echo(f"  adapter held at freeze: {name} does not fit {type(model).__name__}.")
        return space.fix("adapter", "freeze")
    return space


def check_eval_interval(config: StudyConfig, space: SearchSpace, train_rows: int) -> None:
    """An interval longer than the shortest run the space allows would leave such trials with
    no evaluation, hence no score."""
    every = config.eval_every_samples
    epochs = space.lowest("epochs")
    if every is None or every <= train_rows * epochs:
        return
    raise UsageError(
        f"{config.where('eval_every_samples')}: {every} samples is more than the shortest run "
        f"the search space allows ({train_rows} training rows × {epochs} epochs = "
        f"{train_rows * epochs}), so those trials would never be evaluated; use at most "
        f"{train_rows * epochs}, or leave it out to evaluate after every epoch."
    )


def with_found_pair_columns(config: StudyConfig, echo) -> StudyConfig:
    """A similarity or qa base task on a table whose columns no setting names: the columns found
    in the table (forgetting.find_pair_columns), said on screen."""
    named = any(f"base.{name}" in config.origins
                for name in ("text_column", "text_pair_column", "score_column"))
    found = None if config.base is None or named else find_pair_columns(config.base)
    if not found:
        return config
    name = Path(config.base.data).name
    if "score_column" in found:
        echo(
            f"Base task: pairs from columns '{found['text_column']}' and "
            f"'{found['text_pair_column']}' of {name}, scores from "
            f"'{found['score_column']}' (the table's only text and numeric columns; "
            f"--base-text-column, --base-text-pair-column and --base-score-column choose others)."
        )
    else:
        echo(
            f"Base task: questions from column '{found['text_column']}' of {name}, answers from "
            f"'{found['text_pair_column']}' (--base-text-column and --base-text-pair-column "
            f"choose others)."
        )
    return dataclasses.replace(config, base=dataclasses.replace(config.base, **found))


def with_default_check(config: StudyConfig, task: Task, echo,
                       sizes: list[int] | None = None) -> StudyConfig:
    """A study that named no base task gets the default check (forgetting.default_check), said
    in one line: what it reads and measures, and how to change it or turn it off; resumed, it
    reads as many texts as `sizes` (searched part, quick slice) says prepare chose."""
    if config.base is None or config.base.kind != AUTO:
        return config
    base = default_check(config.base, task, user_sized(config))
    if base is not None and sizes:
        base = dataclasses.replace(base, max_examples=sizes[0], check_examples=sizes[1])
    if base is None:
        echo(f"Forgetting is not checked: autoft has no general data for {task.name} models; "
             f"name a base task (--base-kind drift --base-data FOLDER_OF_IMAGES) to check it.")
    else:
        echo(f"Forgetting check (autoft's default, as no base task is named): {base.kind} on "
             f"{base.max_examples} passages of general English shipped with autoft "
             f"({Path(base.data).name}; {base.check_examples} at each evaluation): "
             f"{KINDS[base.kind].measures[0].lower()}{KINDS[base.kind].measures[1:-1]}. "
             f"Bar {percent(base.min_retention)} (--min-retention); --base-kind and --base-data "
             f"check your own data, --base-kind none checks nothing.")
    return dataclasses.replace(config, base=base)


def user_sized(config: StudyConfig) -> bool:
    """Whether the user set how many base units the checks read."""
    return any(f"base.{name}" in config.origins for name in ("max_examples", "check_examples"))


def sized_check(config: StudyConfig, model, tokenizer, echo) -> StudyConfig:
    """The check sized so that the paired 95% interval of retention at the bar is at most
    ±DECISIVE, measured on a stand-in for a model that keeps just the bar (BaseTask.stand_in;
    no tuned model exists yet) over the first SIZING_UNITS units: the fewest that reach it, at
    most QUICK_CAP, read at every evaluation and by the final check, which then reuses the last
    quick check (a final check of 200 MiniLM texts cost 8 s a trial, 64 cost nothing more); where
    no size within the cap reaches it, the final check reads the fewest that do, or every unit
    the audit leaves. Said on screen; unchanged for a kind without a stand-in."""
    set_precision(config.precision)
    limit = min(BASE_MAX_LENGTH, model_length_limit(tokenizer, model.config))
    measured = dataclasses.replace(config.base, max_examples=SIZING_UNITS)
    task = study_base_task(dataclasses.replace(config, base=measured), tokenizer, limit)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model.to(device)
    untouched = observe(task, model, device, "search")
    with autocast(device):
        stand_in = task.stand_in(model, str(device), config.base.min_retention, config.seed)
    if stand_in is None:
        return config
    units = task.units_["search"]
    sizes = sorted({n for n in CHECK_SIZES if n < units} | {units})
    widths: dict[int, float] = {}
    for size in sizes:  # the smallest first, up to the first decisive: the rest is not needed
        widths |= widths_at_bar(task, untouched, stand_in, [size], config.seed)
        if widths[size] <= DECISIVE:
            break
    decisive = [n for n in widths if widths[n] <= DECISIVE]
    quick = min((n for n in decisive if n <= QUICK_CAP), default=None)
    unit = task.split_.unit
    if quick is not None:
        search, said = quick, f"{quick} {unit} at each evaluation and in the final check"
    else:
        quick = max(n for n in widths if n <= QUICK_CAP)
        search = min(decisive, default=len(task.split_.search()))
        said = (f"{quick} {unit} at each evaluation (±{widths[quick]:.1%}), {search} in the "
                f"final check")
    width = widths.get(search)
    echo(f"  sized for ±{DECISIVE:.0%} at the bar (95% intervals of a stand-in model keeping "
         f"{percent(config.base.min_retention)}): {said}"
         + (f" (±{width:.1%})" if width is not None else " (wider than that below it)"))
    return dataclasses.replace(config, base=dataclasses.replace(
        config.base, max_examples=search, check_examples=quick))


def check_task_settings(task: Task, config: StudyConfig) -> None:
    """The metric and the base-task check must be ones the task has."""
    names = [metric.name for metric in task.metrics]
    if config.label_columns and not task.reads_label_columns:
        raise UsageError(
            f"{config.where('label_columns')}: {task.name} reads one label column, not one 0/1 "
            f"column per label; drop --label-columns, or set --task multi-label."
        )
    if config.metric != "auto" and config.metric not in names:
        raise UsageError(
            f"{config.where('metric')}: unknown metric '{config.metric}' for {task.name}; use "
            f"one of {', '.join(names)} (or auto)."
        )
    if config.base and config.base.kind not in kinds_for(task):
        raise UsageError(
            f"{config.where('base.kind')}: {task.name} has no '{config.base.kind}' base-task "
            f"check; use one of {', '.join(kinds_for(task))}."
        )
    if config.base and config.base.preserve_data and not isinstance(task, Preserving):
        raise UsageError(
            f"{config.where('base.preserve_data')}: {task.name} has no preservation loss; "
            "drop base.preserve_data (--base-preserve-data)."
        )


def reusable_prepared(config: StudyConfig, fingerprint: str, echo) -> PreparedData | None:
    """The data an earlier run prepared (prepared.load_prepared_data), or None where there is
    none, or where it is damaged or was prepared from other inputs than the study's: derived
    files, prepared again. The study's inputs are judged before this (study_folder.claim, the
    storage's record); only a folder without either, whose prepared fingerprint reads as one,
    is refused here."""
    folder = prepared_folder(config)
    stored = folder / "fingerprint"
    recorded = stored.read_text(errors="replace").strip() if stored.is_file() else fingerprint
    if recorded != fingerprint:
        known = read_identity(config.study_dir) or recorded_inputs(config)
        if known is None and re.fullmatch(r"[0-9a-f]{16}", recorded):
            raise UsageError(
                f"Study '{config.name}' in {config.study_dir} was prepared from other data or "
                f"model settings; give the data and model it was run on to go on with it, or "
                f"choose a new --study name."
            )
        echo(f"{stored} does not match the study's inputs (damaged?); preparing the data again.")
        return None
    try:
        return load_prepared_data(folder)
    except ValueError as error:  # truncated or edited: prepared again from the same inputs
        echo(f"{folder / 'target.json'} is damaged ({error}); preparing the data again.")
        return None


def prepare_study(config: StudyConfig, echo=print) -> Prepared:
    """Check everything and prepare the data, or reuse what an earlier run of this study prepared.

    Every input problem surfaces here, as a UsageError, before any trial runs.
    """
    space = load_space(config.space)
    config = with_found_pair_columns(config, echo)
    if config.base and config.base.preserve_data:
        preservation_texts(config.base, None)  # a bad file stops here, before anything loads
    folder = prepared_folder(config)
    known = load_hashes(folder)
    fingerprint = data_fingerprint(config, known)
    check_identity(config, fingerprint)
    check_own_database(config)
    check_same_inputs(config, recorded_inputs(config), fingerprint)
    identity = {"fingerprint": fingerprint, "model_identity": model_identity(config.model, known)}
    saved = reusable_prepared(config, fingerprint, echo)
    prepared = (prepare_again(config, space, saved, identity, echo) if saved else
                prepare_fresh(config, space, identity, echo))
    configs = prepared.space.configs()
    if configs is not None and len(configs) < config.n_trials:
        echo(f"  the search space holds {len(configs)} configs, fewer than the {config.n_trials} "
             f"trials asked: each runs once, then the study ends.")
    _save_hashes(folder, known)
    remember(prepared.config, fingerprint, echo)
    for note in prepared.data.notes:
        echo(f"  chose {note}")
    return prepared


def prepare_fresh(config: StudyConfig, space: SearchSpace, identity: dict, echo) -> Prepared:
    """Read and encode the data, load the model, check the space, measure the base skill and
    keep it all in prepared/ for workers and resumes."""
    settings = DataSettings.from_config(config)
    task, task_note = detect_task(config.task, settings, config.model)
    sizing = config.base is not None and config.base.kind == AUTO and not user_sized(config)
    config = with_default_check(config, task, echo)
    check_task_settings(task, config)
    echo(f"Reading {config.train} ...")
    rows = task.read(settings)
    if task_note:
        rows = dataclasses.replace(rows, notes=[task_note, *rows.notes])
    echo(f"Loading model {config.model} ...")
    model, processor = task.load_model(config.model, task.label_names(rows, settings),
                                       config.trust_remote_code)
    depth = model_depth(model)
    with quiet_transformers():  # its warning of texts over the model's length came
        data = task.encode(rows, processor, model.config, settings)  # before autoft's words
    resolved = checked_space(space, config, task, depth, len(data.train), lambda: model, echo)
    # after every check of the user's inputs: measuring the base takes a while
    if config.base and sizing:
        config = sized_check(config, model, processor, echo)
    base = measure_base_skill(config, model, processor, echo) if config.base else None
    preserved = preserving(config, task, data, base, processor)
    prepared = Prepared(config=config, data=data,
                        space=held_without_preservation(resolved, preserved, echo), depth=depth,
                        pad_id=getattr(processor, "pad_token_id", None) or 0, base=base,
                        **identity)
    claim(config, identity["fingerprint"])  # the first write into the folder is the claim
    folder = prepared_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_whole(folder / "fingerprint", identity["fingerprint"])
    save_prepared(prepared, folder)
    return prepared


def prepare_again(config: StudyConfig, space: SearchSpace, saved: PreparedData, identity: dict,
                  echo) -> Prepared:
    """What an earlier run prepared, with the space checked again (it may have been edited)
    and the default check read as that run sized it; the model is loaded only where the
    space's adapters must be checked against it."""
    task = get_task(saved.data.task)
    config = with_default_check(config, task, echo, saved.base and saved.base.get("sizes"))
    echo(f"Reusing the data prepared earlier in {prepared_folder(config)}.")
    if config.text_pair_column and saved.data.train.token_type_ids is None:
        echo("  note: it was prepared before autoft kept segment ids, so its text pairs train "
             "without them, as its earlier trials did; start a new study to use them.")
    def model():
        return task.load_model(config.model, saved.data.label_names, config.trust_remote_code)[0]

    resolved = checked_space(space, config, task, saved.depth, len(saved.data.train), model, echo)
    preserved = preserving(config, task, saved.data, saved.base, None)
    return Prepared(config=config, data=saved.data,
                    space=held_without_preservation(resolved, preserved, echo), depth=saved.depth,
                    pad_id=saved.pad_id, base=saved.base, **identity)


def checked_space(space: SearchSpace, config: StudyConfig, task: Task, depth: int,
                  train_rows: int, model, echo) -> SearchSpace:
    """The space resolved for the model's depth, holding the task's fixed params, its evaluation
    interval and its adapters checked (`model()` gives the model, loaded only when an adapter
    other than freeze must be checked against it)."""
    resolved = space.resolve(depth)
    for name, (value, why) in task.fixed_params.items():
        resolved = resolved.fix(name, value)
        echo(f"  {name} held at {value:g} for {task.name}: {why}.")
    check_eval_interval(config, resolved, train_rows)
    needs_check = [n for n in resolved.values_of("adapter") if n != "freeze"]
    loaded = model() if needs_check else None
    for name in needs_check:
        resolved = checked_adapter(resolved, name, loaded, echo)
    return resolved
