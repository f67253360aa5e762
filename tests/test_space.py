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


def test_quick_space_starts_with_the_top_half_then_its_listed_starts() -> None:
    starts = load_space("quick").resolve(6).start_params()
    assert [(s["trainable_layers"], s["learning_rate"], s["preserve_weight"]) for s in starts] == [
        (3, 5e-5, 0),
        (1, 2e-4, 0),
        (0, 5e-4, 0),
        (2, 1e-4, 1),
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
