"""Tests for autoft.report: summary.json, report.md and the self-contained report.html, on a study
with every kind of trial written straight into a real SQLite storage, and on a real tiny study.
The page is opened in headless Chromium to check that its plots decode and take up space."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from autoft.report import gain_words, summary_text, write_report

DISTRIBUTIONS = {
    "learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
    "trainable_layers": IntDistribution(0, 6),
    "batch_size": CategoricalDistribution([16, 32]),
}
BASE = {"kind": "similarity", "name": "spearman", "score": 0.5, "min_retention": 0.9}


def add_trial(study, params, state, value=None, retention=None, reason=None):
    """A trial as the objective records it: params, evaluations, retention, constraint."""
    curve = [0.5, 0.6, value] if value is not None else [0.4]
    evaluations = [
        {"step": i + 1, "samples_seen": 100 * (i + 1), "value": v, "train_loss": 1.0 - v,
         "seconds": 0.1}
        for i, v in enumerate(curve)
    ]
    attrs = {"params": {**params, "epochs": 3}, "evaluations": evaluations}
    if retention is not None:
        attrs |= {"retention": retention, "base_score": retention * BASE["score"],
                  "constraint": [BASE["min_retention"] - retention]}
    if reason:
        attrs["fail_reason" if state == TrialState.FAIL else "prune_reason"] = reason
    if state == TrialState.FAIL:
        attrs["counts_toward_budget"] = True  # a failure of its own, as the objective records
    study.add_trial(create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None, params=params,
        distributions=DISTRIBUTIONS, user_attrs=attrs,
        intermediate_values={e["step"]: e["value"] for e in evaluations},
    ))


def make_study(folder: Path, complete: int = 6) -> optuna.Study:
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name="synthetic", direction="maximize",
                                storage=f"sqlite:///{folder / 'study.db'}")
    facts = {"metric": "macro_f1", "depth": 6, "base": BASE, "model": "tiny-encoder",
             "data_description": "reviews.csv (400 training and 100 validation examples)",
             "default_params": {"learning_rate": 3e-5, "trainable_layers": 6, "batch_size": 32},
             "notes": ["metric: macro_f1, since the largest class is 3.0× the smallest"],
             "settings": {"preset": "quick", "space": "quick", "n_trials": 8,
                          "pruner_startup_trials": 2, "pruner_warmup_steps": 0}}
    for key, value in facts.items():
        study.set_user_attr(key, value)
    add_trial(study, {"learning_rate": 3e-5, "trainable_layers": 6, "batch_size": 32},
              TrialState.COMPLETE, 0.70, retention=0.95)
    for i in range(1, complete):
        add_trial(study, {"learning_rate": 1e-5 * (i + 1), "trainable_layers": i % 7,
                          "batch_size": 16 if i % 2 else 32},
                  TrialState.COMPLETE, 0.70 + 0.03 * i, retention=1.0 - 0.04 * i)
    add_trial(study, {"learning_rate": 9e-4, "trainable_layers": 6, "batch_size": 16},
              TrialState.PRUNED, reason="below the median of earlier trials")
    add_trial(study, {"learning_rate": 1e-3, "trainable_layers": 6, "batch_size": 16},
              TrialState.FAIL, reason="training loss became nan (not finite)")
    return study


def test_report_states_the_answer_in_words_and_lists_every_trial(tmp_path: Path) -> None:
    study = make_study(tmp_path / "s")
    summary = write_report(study, tmp_path / "s")
    # trial 2: 0.76 at retention 0.92 is the best feasible; trial 5 (0.85, 0.80) forgot too much
    assert summary["best"]["number"] == 2
    assert summary["best"]["retention"] == pytest.approx(0.92)
    assert summary["default"]["value"] == pytest.approx(0.70)
    assert summary["counts"] == {"complete": 6, "pruned": 1, "failed": 1, "interrupted": 0,
                                 "running": 0, "waiting": 0}
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["base"] == BASE
    md = (tmp_path / "s" / "report.md").read_text()
    assert "Best config (trial 2): train the top 2 of 6 layers at learning rate 3.0e-05" in md
    assert "the default config (trial 0) reached 0.7000, so tuning gained +0.0600" in md
    assert "It keeps 92.0% of the base model's similarity skill" in md
    assert "the bar was 90%" in md
    assert "chose metric: macro_f1, since the largest class is 3.0× the smallest" in md
    assert "used search space 'quick', a budget of 8 trials" in md
    for row in ("| 6 | pruned |", "below the median of earlier trials", "| 7 | fail |",
                "training loss became nan"):
        assert row in md
    page = (tmp_path / "s" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 5
    assert "http://" not in page and "https://" not in page  # opens offline


def test_small_study_gets_sentences_instead_of_plots_it_cannot_support(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="tiny", direction="maximize",
                                storage=f"sqlite:///{tmp_path / 'study.db'}")
    study.set_user_attr("metric", "accuracy")
    study.set_user_attr("depth", 2)
    add_trial(study, {"learning_rate": 3e-5, "trainable_layers": 2, "batch_size": 32},
              TrialState.COMPLETE, 0.8)
    summary = write_report(study, tmp_path)
    assert summary["best"]["number"] == 0 and "base" not in summary
    md = (tmp_path / "report.md").read_text()
    assert "Parameter importances need at least 2 complete trials; this study has 1." in md
    assert "No trial measured base-task retention" in md
    assert "Forgetting was NOT checked: this study has no base task" in md
    assert (tmp_path / "report.html").read_text().count("<img") == 3


def test_report_of_a_real_tiny_study(tiny_study) -> None:
    study, folder = tiny_study
    summary = write_report(study, folder)
    assert summary["counts"]["complete"] == 3 and summary["counts"]["pruned"] == 1
    md = (folder / "report.md").read_text()
    assert re.search(r"chose validation: \d+ rows held out of train.csv, stratified", md)
    assert "chose max_length" in md
    assert "pruned" in md and "| 3 | pruned |" in md
    details = summary["best"]["score_details"]
    assert details["average"] == "macro" and set(details["per_label"]) == {"neg", "pos"}
    words = f"precision {details['precision']:.4f}, recall {details['recall']:.4f} (macro average)"
    assert f"At it, its validation {words}" in md
    assert "## Per class" in md and re.search(r"\| pos \| [01]\.\d{4} \| [01]\.\d{4} \|", md)
    assert words in (folder / "report.html").read_text()
    assert f"  {words}" in summary_text(summary).splitlines()


def test_a_study_from_before_precision_and_recall_were_recorded_reports_without_them(
    tmp_path: Path
) -> None:
    study = make_study(tmp_path)
    summary = write_report(study, tmp_path)
    assert summary["best"]["score_details"] is None
    md = (tmp_path / "report.md").read_text()
    assert "precision" not in md and "Per class" not in md
    assert "precision" not in summary_text(summary)


PROBE = """<script>
window.addEventListener('load', () => {
  const shown = [...document.images].map(i => {
    const box = i.getBoundingClientRect();
    return {natural: i.naturalWidth, width: box.width, height: box.height};
  });
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify(shown);
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing on CI; install Debian's package `chromium`")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


@pytest.mark.slow
def test_report_plots_render_in_headless_chromium(tmp_path: Path) -> None:
    browser = chromium()
    make_study(tmp_path / "s")
    write_report(optuna.load_study(study_name="synthetic",
                                   storage=f"sqlite:///{tmp_path / 's' / 'study.db'}"),
                 tmp_path / "s")
    page = (tmp_path / "s" / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,3000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probed.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    shown = json.loads(dom.split('<pre id="probe">')[1].split("</pre>")[0])
    assert len(shown) == 5
    assert all(img["natural"] > 300 and img["width"] > 300 and img["height"] > 150
               for img in shown), shown
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", probed.as_uri()],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text and plots, not a blank page


def test_learning_curves_show_the_best_trials_in_the_metric_direction(monkeypatch) -> None:
    """With RMSE (lower is better) the top five are the five lowest, not the five highest."""
    from autoft import plots

    monkeypatch.setattr(plots, "_png", lambda fig: fig)  # the figure itself, to read its legend
    study = optuna.create_study(direction="minimize")
    for i in range(7):  # evaluations 0.5, 0.6, then 0.1 ... 0.7: trials 0-4 reach the lowest
        add_trial(study, {"learning_rate": 1e-5 * (i + 1), "trainable_layers": 2,
                          "batch_size": 16}, TrialState.COMPLETE, 0.1 * (i + 1))
    figure = plots.study_plots(study)[-1].png
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert sorted(int(label.split(":")[0].split()[1]) for label in labels) == [0, 1, 2, 3, 4]


def test_trial_table_names_what_the_answer_names(tmp_path: Path) -> None:
    """The best config preserves and was mixed back: the table's row says both, as the answer
    above it does."""
    study = make_study(tmp_path / "s")
    params = {"learning_rate": 2e-4, "trainable_layers": 4, "batch_size": 16}
    add_trial(study, params, TrialState.COMPLETE, 0.95, retention=0.97)
    number = len(study.trials) - 1
    study.add_trial(create_trial(  # the same trial with its preservation weight and mix
        state=TrialState.COMPLETE, value=0.96, params=params, distributions=DISTRIBUTIONS,
        user_attrs={**study.trials[number].user_attrs, "mix": 0.75,
                    "params": {**params, "epochs": 3, "preserve_weight": 0.3}}))
    write_report(study, tmp_path / "s")
    md = (tmp_path / "s" / "report.md").read_text()
    answer = next(line for line in md.splitlines() if line.startswith("Best config"))
    row = next(line for line in md.splitlines() if line.startswith(f"| {number + 1} |"))
    assert "preservation loss ×0.3" in answer and "75%" in answer
    assert "×0.3" in row and "75%" in row


def test_the_answer_is_said_to_beat_the_default_only_beyond_the_validation_noise() -> None:
    summary = {"best": {"number": 4, "value": 0.70}, "direction": "maximize",
               "default": {"number": 0, "value": 0.66, "standard_error": 0.027}}
    assert gain_words(summary).startswith(
        "Tuning did not beat the default config beyond the validation noise (+0.0400 against "
        "±0.0540")
    summary["default"]["standard_error"] = 0.01
    assert gain_words(summary).startswith("That beats the default config by 0.0400, beyond")
    loss = {"best": {"number": 2, "value": 1.0}, "direction": "minimize",
            "default": {"number": 0, "value": 1.5, "standard_error": 0.1}}
    assert "by 0.5000, beyond" in gain_words(loss)
    assert gain_words(summary | {"best": {"number": 0, "value": 0.66}}) == ""


def test_a_base_skill_that_is_noise_gets_no_retention_stated(tmp_path: Path) -> None:
    """Spearman 0.10 on the searched half, -0.09 on the audit half: the screen, the report and
    the summary said 'keeps 100.0% (95% interval 100.0%-117.4%)'. Prepare marks such a base
    (test_default_check), and nothing states a share of it."""
    study = make_study(tmp_path / "s")
    noise = "the base model's spearman on pairs.csv, 0.100, is within its noise of no skill"
    study.set_user_attr("base", BASE | {"noise": noise})
    summary = write_report(study, tmp_path / "s")
    md = (tmp_path / "s" / "report.md").read_text()
    assert f"Its retention is not stated: {noise}." in md
    assert "It keeps" not in md
    screen = summary_text(summary)
    assert f"retention not stated: {noise}" in screen and "keeps 92.0%" not in screen
