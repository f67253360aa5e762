"""optuna-dashboard opens an autoft study's SQLite storage as it is: its server, started on the
study file, serves every trial with autoft's user attributes through its HTTP API."""

import json
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

DASHBOARD = shutil.which("optuna-dashboard")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, deadline: float):
    """GET JSON, retrying while the server starts (bounded by the deadline)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.skipif(DASHBOARD is None, reason="optuna-dashboard is not installed (test extra)")
def test_dashboard_serves_the_trials_with_autoft_attributes(tiny_study) -> None:
    study, folder = tiny_study
    port = free_port()
    server = subprocess.Popen(
        [DASHBOARD, f"sqlite:///{folder / 'study.db'}", "--host", "127.0.0.1", "--port",
         str(port), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        studies = get(f"http://127.0.0.1:{port}/api/studies", deadline)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny"]
        detail = get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}", deadline)
    finally:
        server.terminate()
        server.wait(timeout=30)
    study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert study_attrs["metric"] == study.user_attrs["metric"]
    assert json.loads(study_attrs["label_names"]) == ["neg", "pos"]
    served = {t["number"]: t for t in detail["trials"]}
    assert sorted(served) == [t.number for t in study.trials]
    for trial in study.trials:
        attrs = {a["key"]: a["value"] for a in served[trial.number]["user_attrs"]}
        assert attrs["checkpoint"] == trial.user_attrs["checkpoint"]
        assert json.loads(attrs["params"]) == trial.user_attrs["params"]
        assert served[trial.number]["state"].lower() == trial.state.name.lower()
