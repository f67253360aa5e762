"""Greedy soups: the rule (best first; a trial joins only while validation improves and the bar
holds), the average of checkpoints that trained different parts, and a real search whose soup is
recorded as the rule says, scored as its weights score, and, when it wins, audited, reported and
exported as the answer.
"""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from autoft.cli import main
from autoft.export import load_checkpoint_model, load_trial_model
from autoft.model import split_parameters
from autoft.prepared import load_prepared_data
from autoft.soup import Step, average, greedy
from autoft.tasks import recorded_task
from autoft.train import evaluate
from autoft.trials import winning_soup

SPACE = """\
learning_rate: {low: 3.0e-4, high: 3.0e-3, log: true, default: 1.0e-3}
head_lr_multiplier: {value: 10}
batch_size: {value: 16}
trainable_layers: {low: 0, high: max, default: 1}
epochs: {value: 2}
weight_decay: {value: 0.0}
warmup_ratio: {value: 0.0}
interpolation_mixes: []
"""
BAR = 0.9


def test_a_trial_joins_only_while_validation_improves_and_the_bar_holds() -> None:
    scores = {(3,): 0.80, (3, 5): 0.78, (3, 7): 0.85, (3, 7, 9): 0.90, (3, 7, 11): 0.86}
    kept = {(3,): 0.99, (3, 7): 0.97, (3, 7, 9): 0.90, (3, 7, 11): 0.96}
    checked = []

    def check(members: list[int]) -> tuple[float, bool]:
        checked.append(tuple(members))
        return kept[tuple(members)], kept[tuple(members)] >= 0.95

    steps = greedy([3, 5, 7, 9, 11], lambda m: scores[tuple(m)], check)
    assert steps == [Step(3, 0.80, 0.99, True), Step(5, 0.78, None, False),
                     Step(7, 0.85, 0.97, True), Step(9, 0.90, 0.90, False),
                     Step(11, 0.86, 0.96, True)]
    assert (3, 5) not in checked, "a soup that did not improve is not checked"


def test_a_lower_is_better_metric_improves_downward() -> None:
    rmse = {(1,): 1.0, (1, 2): 0.9, (1, 2, 3): 0.95}
    steps = greedy([1, 2, 3], lambda m: rmse[tuple(m)], lambda m: (None, True), sign=-1)
    assert [s.added for s in steps] == [True, True, False]


def test_a_parameter_a_member_did_not_train_counts_as_untouched() -> None:
    untouched = {"body": torch.zeros(2), "head": torch.zeros(2), "count": torch.tensor(0)}
    deep = {"body": torch.tensor([2.0, 4.0]), "head": torch.tensor([1.0, 1.0])}
    shallow = {"head": torch.tensor([3.0, 5.0]), "count": torch.tensor(7)}
    soup = average([deep, shallow], untouched)
    assert set(soup) == {"body", "head", "count"}, "only what some member trained"
    assert torch.equal(soup["body"], torch.tensor([1.0, 2.0]))
    assert torch.equal(soup["head"], torch.tensor([2.0, 3.0]))
    assert soup["count"].item() == 7


def test_a_soup_is_the_answer_only_while_the_trial_it_beat_is_the_best() -> None:
    study = optuna.create_study(direction="maximize")
    for value in (0.7, 0.6):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    study.set_user_attr("soup", {"won": True, "best_trial": 0, "members": [0, 1]})
    assert winning_soup(study)["members"] == [0, 1]
    study.add_trial(optuna.trial.create_trial(value=0.8, params={}, distributions={}))
    assert winning_soup(study) is None, "a trial finished since beat it"
    study.set_user_attr("soup", {"won": False, "best_trial": 2, "members": [2]})
    assert winning_soup(study) is None


def search(tiny_model_dir, tiny_csv, tmp_path, name: str, n_trials: int, base=True) -> int:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    drift = ["--base-kind", "drift", "--base-data", str(tiny_csv), "--min-retention", str(BAR)]
    return main(["search", "--model", str(tiny_model_dir), "--train", str(tiny_csv),
                 "--space", str(space), "--n-trials", str(n_trials), "--study", name,
                 "--studies-dir", str(tmp_path / "s"),
                 *(drift if base else ["--base-kind", "none"])])


def model_and_data(study: optuna.Study, study_dir):
    """Loading a checkpoint into the study's model, and the study's validation data."""
    attrs = study.user_attrs
    data = load_prepared_data(study_dir / "prepared")[0]

    def load(checkpoint):
        return load_checkpoint_model(recorded_task(attrs), attrs["model"], attrs["label_names"],
                                     checkpoint)[0]
    return load, data


@pytest.mark.slow
def test_a_search_records_its_greedy_soup(tiny_model_dir, tiny_csv, tmp_path) -> None:
    assert search(tiny_model_dir, tiny_csv, tmp_path, "soup", 4) == 0
    study_dir = tmp_path / "s" / "soup"
    study = optuna.load_study(study_name="soup", storage=f"sqlite:///{study_dir / 'study.db'}")
    soup = study.user_attrs["soup"]
    feasible = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                       and t.user_attrs["retention"] >= BAR), key=lambda t: -t.value)
    assert len(feasible) >= 2
    assert soup["candidates"] == [t.number for t in feasible][:5], "the best first, at most 5"
    assert soup["best_trial"] == feasible[0].number and soup["seconds"] > 0
    steps = soup["steps"]
    assert [s["number"] for s in steps] == soup["candidates"]
    assert soup["members"] == [s["number"] for s in steps if s["added"]]
    current = steps[0]["value"]
    for step in steps[1:]:  # each member added improved validation and kept the bar
        if step["added"]:
            assert step["value"] > current and step["retention"] >= BAR
            current = step["value"]
        else:
            assert step["value"] <= current or step["retention"] < BAR
    assert soup["value"] == current
    # The recorded score is the score of the members' weights averaged, each member loaded
    # whole (base model + its checkpoint), over every parameter some member trained.
    load, data = model_and_data(study, study_dir)
    checkpoints = [study.trials[n].user_attrs["checkpoint"] for n in soup["members"]]
    trained = set().union(*(load_file(path) for path in checkpoints))
    wholes = [load(path).state_dict() for path in checkpoints]
    model = load(checkpoints[0])
    model.load_state_dict({n: torch.stack([w[n] for w in wholes]).mean(0) for n in trained},
                          strict=False)
    assert evaluate(model, data, 0, torch.device("cpu")) == soup["value"]
    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["soup"]["members"] == soup["members"]
    marker = json.loads((study_dir / "best_model" / ".autoft-export.json").read_text())
    if soup["won"]:
        assert marker["soup"] == soup["members"]
        assert "Best: a soup of trials" in (study_dir / "report.md").read_text()
    else:
        assert marker["trial"] == feasible[0].number and soup["checkpoint"] is None
        assert "did not beat the best trial" in (study_dir / "report.md").read_text()


@pytest.mark.slow
def test_without_a_base_task_a_soup_needs_only_to_score_better(tiny_model_dir, tiny_csv,
                                                               tmp_path) -> None:
    assert search(tiny_model_dir, tiny_csv, tmp_path, "plain", 3, base=False) == 0
    study_dir = tmp_path / "s" / "plain"
    study = optuna.load_study(study_name="plain", storage=f"sqlite:///{study_dir / 'study.db'}")
    soup = study.user_attrs["soup"]
    assert len(soup["candidates"]) == 3 and soup["retention"] is None
    current = soup["steps"][0]["value"]
    for step in soup["steps"][1:]:  # not checked: only the score decides
        assert step["retention"] is None and step["added"] == (step["value"] > current)
        current = step["value"] if step["added"] else current
    assert soup["value"] == current


@pytest.mark.slow
def test_a_winning_soup_is_audited_reported_and_exported(tiny_model_dir, tiny_csv,
                                                         tmp_path) -> None:
    """Two trials built from one set of weights whose head predicts better, pushed apart in
    opposite directions (each then predicts worse): their average is those weights, so the
    soup beats every trial. The first trial's weights are not on this machine, as when another
    machine's worker ran it, so the soup starts from the two."""
    assert search(tiny_model_dir, tiny_csv, tmp_path, "win", 1) == 0
    study_dir = tmp_path / "s" / "win"
    study = optuna.load_study(study_name="win", storage=f"sqlite:///{study_dir / 'study.db'}")
    first = study.trials[0]
    load, data = model_and_data(study, study_dir)
    better = load(first.user_attrs["checkpoint"])
    head = [p for n, p in better.named_parameters() if n in split_parameters(better).head]
    optimizer = torch.optim.Adam(head, lr=1e-2)
    task = recorded_task(study.user_attrs)
    labels = torch.tensor(data.validation.labels)
    for _ in range(60):  # the head learns the validation set itself
        for rows, batch in task.eval_batches(data.validation, 0, torch.device("cpu")):
            torch.nn.functional.cross_entropy(better(**batch).logits, labels[rows]).backward()
            optimizer.step()
            optimizer.zero_grad()
    tuned = load_file(first.user_attrs["checkpoint"])
    state = {n: v.detach().clone() for n, v in better.state_dict().items() if n in tuned}
    bias = next(n for n in state if n.endswith("classifier.bias"))
    for sign, name in ((1, "pushed_up"), (-1, "pushed_down")):
        pushed = dict(state)
        pushed[bias] = state[bias] + sign * torch.tensor([4.0, -4.0])
        path = tmp_path / f"{name}.safetensors"
        save_file(pushed, str(path))
        value = evaluate(load(path), data, 0, torch.device("cpu"))
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, value=value, params=first.params,
            distributions=first.distributions,
            user_attrs={**first.user_attrs, "checkpoint": str(path), "best_value": value}))
    better_value = evaluate(better, data, 0, torch.device("cpu"))
    assert better_value > max(t.value for t in study.trials), "the setup: apart, each is worse"
    (study_dir / "trials" / "0000" / "trainable.safetensors").unlink()
    assert search(tiny_model_dir, tiny_csv, tmp_path, "win", 3) == 0  # the budget is spent
    study = optuna.load_study(study_name="win", storage=f"sqlite:///{study_dir / 'study.db'}")
    soup = study.user_attrs["soup"]
    assert soup["won"] and soup["members"] == sorted([1, 2], key=lambda n: -study.trials[n].value)
    assert soup["best_trial"] == max(study.trials, key=lambda t: t.value).number
    low, high = soup["retention_interval"]  # checked as the search checks a trial's end
    assert soup["retention"] >= BAR and low <= high
    # Its saved weights hold only what a member trained, and score what was recorded.
    saved = load_file(soup["checkpoint"])
    assert set(saved) == set(tuned)
    assert torch.allclose(saved[bias], state[bias], atol=1e-5)
    assert evaluate(load(soup["checkpoint"]), data, 0, torch.device("cpu")) == soup["value"]
    assert study.user_attrs["audits"]["soup"]["members"] == soup["members"]
    summary = json.loads((study_dir / "summary.json").read_text())
    assert summary["soup"]["answer"] and summary["soup"]["audit"]["members"] == soup["members"]
    report = (study_dir / "report.md").read_text()
    assert f"Best: a soup of trials {soup['members'][0]} and {soup['members'][1]}" in report
    # best_model/ is the soup, and `autoft export` without --trial exports it too.
    for folder in (study_dir / "best_model", tmp_path / "out"):
        if folder.name == "out":
            assert main(["export", "--study", "win", "--studies-dir", str(tmp_path / "s"),
                         str(folder)]) == 0
        marker = json.loads((folder / ".autoft-export.json").read_text())
        assert marker["soup"] == soup["members"]
        exported = AutoModelForSequenceClassification.from_pretrained(folder)
        assert torch.equal(exported.state_dict()[bias], saved[bias])
        assert "a soup of trials" in (folder / "README.md").read_text()
    assert main(["export", "--study", "win", "--studies-dir", str(tmp_path / "s"),
                 "--trial", "1", str(tmp_path / "one")]) == 0
    assert json.loads((tmp_path / "one" / ".autoft-export.json").read_text())["trial"] == 1
    one = load_trial_model(task, str(tiny_model_dir), study.user_attrs["label_names"],
                           study.trials[1])[0]
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "one")
    assert torch.equal(exported.state_dict()[bias], one.state_dict()[bias])
