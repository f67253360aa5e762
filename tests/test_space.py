"""Search spaces: the shipped files load, depth words resolve for any model depth, and the study
starts from the default and then the listed starts."""

from pathlib import Path

import pytest

from autoft.errors import UsageError
from autoft.space import find_space_file, load_space

SHIPPED = ("quick", "default", "thorough")


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("depth", [1, 6, 12])
def test_shipped_spaces_resolve_for_any_depth(name: str, depth: int) -> None:
    space = load_space(name).resolve(depth)
    layers = next(p for p in space.parameters if p.name == "trainable_layers")
    assert (layers.low, layers.high) == (0, depth)
    assert layers.default == (depth + 1) // 2
    starts = space.start_params()
    assert starts[0] == {k: v for k, v in space.default_params().items() if k in starts[0]}
    assert all(0 <= start["trainable_layers"] <= depth for start in starts)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_listed_start_of_a_shipped_space_fits_its_ranges(name: str) -> None:
    """A start outside its space's ranges is left out without a word: a range narrowed past a
    start must fail here instead."""
    space = load_space(name).resolve(6)
    assert len(space.start_params()) == 1 + len(space.starts)


def test_quick_space_starts_with_the_top_half_then_its_listed_starts() -> None:
    starts = load_space("quick").resolve(6).start_params()
    assert [(s["trainable_layers"], s["learning_rate"], s["preserve_weight"])
            for s in starts] == [
        (3, 5e-5, 0),
        (1, 2e-4, 0),
        (0, 5e-4, 0),
        (2, 1e-4, 1),
        (6, 1e-4, 0),
    ]


def test_depth_words_in_ranges_values_and_starts(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "learning_rate: {value: 1.0e-4}\nhead_lr_multiplier: {value: 10}\n"
        "batch_size: {value: 16}\ntrainable_layers: {low: half, high: max}\n"
        "epochs: {value: 1}\nweight_decay: {value: 0.0}\nwarmup_ratio: {value: 0.0}\n"
        "starts:\n  - {trainable_layers: max}\n  - {trainable_layers: 1}\n"
    )
    space = load_space(str(path)).resolve(5)
    layers = next(p for p in space.parameters if p.name == "trainable_layers")
    assert (layers.low, layers.high) == (3, 5)
    # no default given: the middle of 3..5; the start below the range is dropped
    assert [s["trainable_layers"] for s in space.start_params()] == [4, 5]


def test_an_unknown_depth_word_names_the_file_and_the_parameter(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    quick = find_space_file("quick").read_text()
    path.write_text(quick.replace("default: half", "default: most"))
    with pytest.raises(UsageError, match=r"space.yaml: trainable_layers value 'most' is not a"):
        load_space(str(path))


ADAPTER_LINES = (
    "adapter: {choices: [freeze, lora], default: freeze}\n"
    "lora_rank: {low: 4, high: 32, log: true, default: 8, when: {adapter: lora}}\n"
    "lora_alpha: {value: 16, when: {adapter: lora}}\n"
)


def adapter_space(tmp_path: Path, lines: str = ADAPTER_LINES, starts: str = "") -> Path:
    path = tmp_path / "space.yaml"
    quick = find_space_file("quick").read_text().split("starts:")[0]
    path.write_text(quick + lines + starts)
    return path


def test_lora_parameters_are_sampled_only_when_the_adapter_is_lora(tmp_path: Path) -> None:
    import optuna

    space = load_space(str(adapter_space(tmp_path))).resolve(6)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sampled = [space.sample(study.ask()) for _ in range(20)]
    assert {params["adapter"] for params in sampled} == {"freeze", "lora"}
    for params in sampled:
        lora = params["adapter"] == "lora"
        assert ("lora_rank" in params) == ("lora_alpha" in params) == lora, params
        assert not lora or (4 <= params["lora_rank"] <= 32 and params["lora_alpha"] == 16)


def test_defaults_and_starts_carry_the_lora_parameters_only_under_lora(tmp_path: Path) -> None:
    starts = (
        "starts:\n  - {adapter: lora, trainable_layers: 2}\n  - {adapter: lora, lora_rank: 16}\n"
    )
    space = load_space(str(adapter_space(tmp_path, starts=starts))).resolve(6)
    default = space.default_params()
    assert default["adapter"] == "freeze" and "lora_rank" not in default
    configs = space.start_params()
    assert [(c["adapter"], c.get("lora_rank")) for c in configs] == [
        ("freeze", None), ("lora", 8), ("lora", 16)]
    assert configs[1]["trainable_layers"] == 2 and "lora_alpha" not in configs[1]  # fixed value


def test_a_space_without_adapter_trains_as_before(tmp_path: Path) -> None:
    space = load_space("quick").resolve(6)
    assert space.default_params()["adapter"] == "freeze"
    assert "lora_rank" not in space.default_params()
    assert space.values_of("adapter") == ("freeze",)
    assert all("adapter" not in start for start in space.start_params()), "held, not searched"


@pytest.mark.parametrize(
    "lines, starts, words",
    [
        ("lora_rank: {low: 4, high: 8, when: {adapter: lora}}\n", "",
         ["lora_rank applies when adapter is lora", "adapter never takes", "add lora to adapter"]),
        ("adapter: {value: freeze}\nlora_rank: {low: 4, high: 8, when: {adapter: lora}}\n", "",
         ["adapter never takes", "add lora to adapter"]),
        ("adapter: {choices: [freeze, lorax]}\n", "",
         ["adapter value 'lorax' is unknown", "freeze, lora"]),
        ("adapter: {choices: [freeze, lora]}\nlora_rank: {low: 0, high: 8}\n", "",
         ["lora_rank must be positive, not 0"]),
        ("adapter: {choices: [freeze, lora]}\nlora_rank: {value: -4}\n", "",
         ["lora_rank must be positive, not -4"]),
        (ADAPTER_LINES, "starts:\n  - {lora_rank: 16}\n",
         ["sets lora_rank, which does not apply", "remove lora_rank"]),
        ("lora_rank: {value: 8, when: adapter}\n", "", ["lora_rank.when must map"]),
    ],
)
def test_bad_adapter_spaces_name_the_file_the_parameter_and_the_fix(
    tmp_path: Path, lines: str, starts: str, words: list[str]
) -> None:
    with pytest.raises(UsageError) as caught:
        load_space(str(adapter_space(tmp_path, lines, starts)))
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "space.yaml")) and len(message.splitlines()) == 1
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("mixes", ["[0.5, 1.5]", "half"])
def test_an_interpolation_grid_outside_zero_to_one_is_refused(tmp_path: Path, mixes: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(find_space_file("quick").read_text() + f"interpolation_mixes: {mixes}\n")
    with pytest.raises(UsageError, match="interpolation_mixes must be a list of numbers from 0"):
        load_space(str(path))


def test_interpolate_is_no_longer_a_parameter_and_an_empty_grid_turns_the_curve_off(tmp_path):
    """Every trial with a base task ends with its curve; a space that still searches
    `interpolate` is told so, not met with 'unknown parameter'."""
    text = find_space_file("quick").read_text()
    old = tmp_path / "old.yaml"
    old.write_text(text + "\ninterpolate: {choices: [false, true], default: false}\n")
    with pytest.raises(UsageError, match="'interpolate' is no longer a parameter"):
        load_space(str(old))
    off = tmp_path / "off.yaml"
    off.write_text(text.replace("interpolation_mixes: [0.25, 0.5, 0.75]",
                                "interpolation_mixes: []"))
    assert load_space(str(off)).mixes == ()


def test_a_space_of_few_configs_lists_each_once_and_a_float_range_lists_none(tmp_path: Path):
    path = tmp_path / "few.yaml"
    path.write_text(
        "learning_rate: {value: 1.0e-3}\nhead_lr_multiplier: {value: 10}\n"
        "batch_size: {choices: [8, 16]}\ntrainable_layers: {low: 0, high: max, default: 0}\n"
        "epochs: {value: 1}\nweight_decay: {value: 0.0}\nwarmup_ratio: {value: 0.0}\n"
        "adapter: {choices: [freeze, lora], default: freeze}\n"
        "lora_rank: {choices: [4, 8], when: {adapter: lora}}\n")
    configs = load_space(str(path)).resolve(2).configs()
    assert len(configs) == 2 * 3 * (1 + 2)  # batch × depth × (freeze, or lora at two ranks)
    assert len({tuple(sorted(c.items())) for c in configs}) == len(configs)
    assert {"batch_size": 16, "trainable_layers": 2, "adapter": "lora", "lora_rank": 8} in configs
    assert all("lora_rank" not in c for c in configs if c["adapter"] == "freeze")
    assert load_space("default").resolve(6).configs() is None
