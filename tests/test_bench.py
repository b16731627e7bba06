"""`make bench` runs what exists: every script bench/run_all.py names is there and accepts the
options it is given (each script's own --help, in a fresh interpreter)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import run_all  # noqa: E402


def test_makefile_names_only_files_that_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    named = re.findall(r"\b((?:bench|tests|facespace_bridge)/[\w/.-]+\.py)\b", makefile)
    assert named and all((REPO / path).exists() for path in named), named


@pytest.mark.parametrize("script", sorted({script for script, _, _ in run_all.BENCHES}))
def test_run_all_gives_each_script_options_it_accepts(script: str) -> None:
    assert (REPO / "bench" / script).exists()
    shown = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    for name, full, quick in run_all.BENCHES:
        if name == script:
            for option in (arg for arg in full + quick if arg.startswith("--")):
                assert option in shown.stdout, f"{script} has no {option}"
