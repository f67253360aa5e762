"""Tests for autoft.adapters.bitfit: the head and the biases of the top blocks train, nothing
else (the embeddings' biases too at full depth); training changes exactly those; kept weights are
plain transformers names that give a fresh model the trained logits; a model whose blocks have no
bias is refused in one sentence naming the space file; a real search trains a BitFit trial.

Expected names come from the name patterns of tests/conftest.py, independently of the structural
search the library does.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from autoft.adapters import get_adapter
from autoft.describe import describe_params
from autoft.errors import UsageError
from autoft.params import TrialParams

PARAMS = TrialParams(1e-2, 1.0, 8, 1, 1, 0.0, 0.0, adapter="bitfit")


def expected_trainable(arch, names: list[str], k: int) -> set[str]:
    """The head, and the biases of the top k blocks (of everything at full depth)."""
    head = {n for n in names if n.startswith(arch.head)}
    low = 0 if k == arch.depth else arch.depth - k
    biases = {n for n in names if n.endswith(".bias") and n not in head
              and (arch.block_index(n) >= low or k == arch.depth)}
    return head | biases


def bitfit_model(arch, k: int):
    model = arch.build()
    get_adapter("bitfit").apply(model, k, PARAMS)
    return model


def steps(arch, model, count: int = 2) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(count):
        model(**arch.random_batch(model)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)


def refused(arch) -> bool:
    try:
        get_adapter("bitfit").check(arch.build(), "space.yaml")
    except UsageError:
        return True
    return False


def test_only_the_head_and_the_top_blocks_biases_get_gradients_and_change(arch) -> None:
    if refused(arch):
        names = [n for n, _ in arch.build().named_parameters() if arch.block_index(n) >= 0]
        assert not any(n.endswith(".bias") for n in names), "refused only without biases"
        return
    for k in range(arch.depth + 1):
        model = bitfit_model(arch, k)
        names = [n for n, _ in model.named_parameters()]
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == expected_trainable(arch, names, k), k
        assert all(n.endswith(".bias") for n in trainable if not n.startswith(arch.head)), k
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        steps(arch, model)
        got_gradients = {n for n, p in model.named_parameters() if p.grad is not None}
        assert got_gradients == trainable, k
        for name, param in model.named_parameters():
            assert (not torch.equal(param, before[name])) == (name in trainable), (k, name)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "distilbert"], indirect=True)
def test_kept_weights_give_a_fresh_model_the_trained_logits(arch) -> None:
    adapter = get_adapter("bitfit")
    model = bitfit_model(arch, 1)
    steps(arch, model)
    batch = {k: v for k, v in arch.random_batch(model).items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    kept = adapter.kept_weights(model)
    assert all(name.endswith(".bias") or name.startswith(arch.head) for name in kept)
    fresh = arch.build().eval()
    assert set(kept) <= set(fresh.state_dict()), "plain transformers names"
    fresh.load_state_dict(kept, strict=False)
    adapter.restore(model, kept)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, expected)
        torch.testing.assert_close(model(**batch).logits, expected)


def test_a_model_whose_blocks_have_no_bias_is_refused_in_one_sentence(archs) -> None:
    with pytest.raises(UsageError) as refusal:
        get_adapter("bitfit").check(archs["llama"].build(), "space.yaml")
    message = str(refusal.value)
    assert message.startswith("space.yaml: adapter bitfit") and message.count(". ") == 0
    assert "LlamaDecoderLayer" in message and "remove bitfit from adapter" in message


def test_a_bitfit_trial_is_said_as_the_biases_it_trains() -> None:
    params = {"learning_rate": 1e-3, "trainable_layers": 2, "adapter": "bitfit"}
    assert describe_params(params, 6).startswith("train the biases of the top 2 of 6 layers at")
    assert describe_params(params, 6, short=True).startswith("top 2/6 layers BitFit, lr")
    head_only = {**params, "trainable_layers": 0}
    assert describe_params(head_only, 6).startswith("train only the new head")


@pytest.mark.slow
def test_a_search_with_bitfit_in_its_space_runs_a_bitfit_trial(
    tiny_model_dir, tiny_csv, tmp_path: Path, write_space, search_args, cli_env, open_sqlite_study
) -> None:
    """A real `autoft search` whose space holds the adapter at bitfit (17 s)."""
    space = write_space(tmp_path / "space.yaml", starts="adapter: {value: bitfit}\n")
    studies = tmp_path / "studies"
    done = subprocess.run(
        search_args(tiny_model_dir, tiny_csv, space, studies, "bitfit", 1, "cpu"),
        capture_output=True, text=True, env=cli_env(), timeout=600,
    )
    assert done.returncode == 0, done.stderr
    trial = open_sqlite_study(studies, "bitfit").trials[0]
    assert trial.state.name == "COMPLETE", trial.user_attrs
    assert trial.params.get("adapter") is None and trial.user_attrs["adapter"] == "bitfit"
    assert trial.user_attrs["params"]["adapter"] == "bitfit"
    from safetensors.torch import load_file

    kept = load_file(trial.user_attrs["checkpoint"])
    assert kept and all(name.endswith(".bias") or name.startswith(("bert.pooler.", "classifier."))
                        for name in kept)
    assert "biases" in (studies / "bitfit" / "report.md").read_text()
