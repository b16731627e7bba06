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


def test_bench_readme_quotes_only_scripts_and_flags_that_exist() -> None:
    """Every `.venv/bin/python bench/<script>` line of bench/README.md names a script that is
    there and flags (also those in its trailing comment) that the script's --help shows."""
    readme = (REPO / "bench" / "README.md").read_text()
    quoted: dict[str, set[str]] = {}
    for script, rest in re.findall(r"\.venv/bin/python bench/([\w.]+\.py)([^\n]*)", readme):
        # An option's value is not a flag of the script (`--row=--no-quick-polls`, `"--row=..."`).
        rest = re.sub(r'"([^"]*)"', lambda quoted: quoted.group(1).split("=")[0], rest)
        rest = re.sub(r"=\S+", "", rest)
        quoted.setdefault(script, set()).update(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest))
    assert quoted
    for script, flags in sorted(quoted.items()):
        assert (REPO / "bench" / script).exists(), script
        shown = subprocess.run(
            [sys.executable, str(REPO / "bench" / script), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        missing = sorted(flag for flag in flags if flag not in shown.stdout)
        assert not missing, f"bench/README.md quotes {script} with {missing}, which it does not have"
