"""The wheel, as a user gets it: `python -m build --wheel`, installed into a fresh venv (not
this checkout), then the installed `facespace-bridge` run from a directory that has no
source tree: --help, --version, schemas list, and a replay against the simulator into a
file sink whose lines are checked against the schemas and the simulator's ground truth.

pip installs the dependencies from the configured index, as a user's pip would; on this
machine that took about 10 s (most of the dependencies come from pip's cache)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from facespace_bridge import __version__, parse_rfc3339
from facespace_bridge.schemas import catalogue, validate
from facespace_bridge.simulator import SimulatorServer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv's bin directory, with the wheel (and its dependencies) installed."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(root)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, timeout=600)
    return root / "bin"


def run_installed(bin_dir: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FACESPACE_", "PYTHON", "VIRTUAL_ENV"))}
    result = subprocess.run(
        [str(bin_dir / "facespace-bridge"), *args],
        cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_wheel_carries_the_package_and_every_schema_file(wheel: Path) -> None:
    assert wheel.name == f"facespace_bridge-{__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"facespace_bridge/_schemas/{name}/v{schema.version}.json"
        for name, versions in catalogue(REPO / "schemas").items()
        for schema in versions
    }
    assert expected and expected <= names
    assert "facespace_bridge/cli.py" in names
    assert not any(name.startswith(("tests/", "deploy/", "bench/")) for name in names)
    entry_points = zipfile.ZipFile(wheel).read(f"facespace_bridge-{__version__}.dist-info/entry_points.txt")
    assert b"facespace-bridge = facespace_bridge.cli:main" in entry_points


def test_installed_command_help_version_and_schemas(installed: Path, tmp_path: Path) -> None:
    assert "Commands:" in run_installed(installed, "--help", cwd=tmp_path)
    assert __version__ in run_installed(installed, "--version", cwd=tmp_path)
    text = run_installed(installed, "schemas", "list", cwd=tmp_path)
    listed = [line.split("\t") for line in text.splitlines()]
    schemas = catalogue(REPO / "schemas")
    expected = {f"facespace.{name}/v{s.version}" for name, versions in schemas.items() for s in versions}
    assert {row[2] for row in listed} == expected
    # Read from the installed package, not from this checkout.
    assert all(f"{os.sep}_schemas{os.sep}" in row[3] and str(REPO) not in row[3] for row in listed)


def test_installed_replay_into_a_file_matches_the_ground_truth(
    installed: Path, simulator: SimulatorServer, tmp_path: Path
) -> None:
    output = tmp_path / "events.jsonl"
    summary = run_installed(
        installed,
        "replay", "--start-time", "06:00 23/10/23", "--end-time", "07:59 23/10/23",
        "--broker", "file", "--output", str(output), "--no-progress",
        cwd=tmp_path,
        env={"FACESPACE_API_URL": simulator.base_url, "FACESPACE_API_KEY": simulator.api_key},
    )  # fmt: skip
    start = datetime(2023, 10, 23, 6, 0, 0, tzinfo=timezone.utc)
    end = datetime(2023, 10, 23, 7, 59, 59, tzinfo=timezone.utc)
    truth = Counter(simulator.world.entries(start, end))
    assert sum(truth.values()) > 20
    payloads = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    for payload in payloads:
        validate(payload)
    got = Counter((p["camera_id"], p["person"], parse_rfc3339(p["seen_at"])) for p in payloads)
    assert got == truth
    assert len({p["event_id"] for p in payloads}) == len(payloads)
    assert summary.startswith(f"published {len(payloads)} sightings and 0 dead letters")
