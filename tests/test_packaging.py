"""The wheel carries every module of autoft (subpackages too) and what it reads at run time
besides its code: the search spaces (from the top-level search_spaces/, the one copy) and the demo
study. CI installs it and runs a search."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_holds_every_module_the_search_spaces_and_the_demo_study(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("autoft-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    spaces = {f"autoft/search_spaces/{p.name}" for p in (ROOT / "search_spaces").glob("*.yaml")}
    assert spaces and spaces <= names, sorted(names)
    assert "autoft/demo.yaml" in names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "autoft").rglob("*.py")
               if "search_spaces" not in p.parts}
    assert modules <= names, sorted(modules - names)
