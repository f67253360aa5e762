"""Every script in benchmarks/ still imports: they are not part of the test run, so an autoft
module that moved or renamed a name they use would otherwise be found only by the next person who
measures something."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# One process for all of them: torch and transformers are imported once.
LOAD_ALL = """
import runpy, sys
sys.path.insert(0, sys.argv[1])
failed = []
for path in sys.argv[2:]:
    try:
        runpy.run_path(path, run_name="imported_by_a_test")
    except Exception as error:
        failed.append(f"{path}: {type(error).__name__}: {error}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
def test_every_benchmark_script_imports() -> None:
    scripts = sorted(str(p) for p in BENCHMARKS.glob("*.py"))
    assert len(scripts) >= 10
    done = subprocess.run([sys.executable, "-c", LOAD_ALL, str(BENCHMARKS), *scripts],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
