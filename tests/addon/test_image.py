"""What can be proven of the add-on's image without a Docker engine: every package it installs
has a musllinux wheel for each architecture of config.yaml (so the Supervisor's build on the
household's machine compiles nothing and needs no build tools), the pins cover the package's
runtime dependencies but the Kafka clients, and the image runs the command the tests run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.commands.test_addon import ADDON as TESTED_COMMAND

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "addon"
CONFIG = yaml.safe_load((ADDON / "config.yaml").read_text())
DOCKERFILE = (ADDON / "Dockerfile").read_text()
PYTHON = re.search(r"base-python:(\d+\.\d+)-alpine", DOCKERFILE)
PLATFORMS = {"amd64": "musllinux_1_2_x86_64", "aarch64": "musllinux_1_2_aarch64"}
KAFKA_CLIENTS = {"confluent-kafka", "aiokafka"}  # no musllinux wheels; the add-on writes MQTT only


def pins() -> dict[str, Requirement]:
    lines = (ADDON / "requirements.txt").read_text().splitlines()
    found = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(r.name): r for r in found}


@pytest.mark.parametrize("arch", CONFIG["arch"])
def test_every_pin_has_a_musllinux_wheel(arch: str, tmp_path: Path) -> None:
    assert PYTHON is not None
    done = subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
            "--only-binary", ":all:", "--platform", PLATFORMS[arch], "--python-version", PYTHON[1],
            "--implementation", "cp", "-r", str(ADDON / "requirements.txt"), "-d", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # Nothing beyond the pins came along: the pins are the whole closure.
    downloaded = {canonicalize_name(path.name.split("-")[0]) for path in tmp_path.glob("*.whl")}
    assert downloaded == set(pins())


def test_pins_cover_the_runtime_dependencies_but_kafka() -> None:
    pinned = pins()
    assert all(str(r.specifier).startswith("==") for r in pinned.values())
    assert not pinned.keys() & KAFKA_CLIENTS
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert PYTHON is not None
    environment = {"python_version": PYTHON[1], "python_full_version": f"{PYTHON[1]}.0"}
    for line in project["dependencies"]:
        needed = Requirement(line)
        name = canonicalize_name(needed.name)
        if name in KAFKA_CLIENTS or (needed.marker and not needed.marker.evaluate(environment)):
            continue
        assert name in pinned, f"{name} is not in addon/requirements.txt"
        (version,) = [spec.version for spec in pinned[name].specifier]
        assert needed.specifier.contains(version), f"{name}=={version} does not satisfy {needed}"


def test_the_image_installs_the_release_and_runs_the_tested_command() -> None:
    assert "ARG BUILD_VERSION" in DOCKERFILE  # config.yaml's version, from the Supervisor
    assert re.search(r"pip install .*--only-binary :all: -r /tmp/requirements\.txt", DOCKERFILE)
    assert re.search(r'pip install .*--no-deps "facespace-bridge==\$\{BUILD_VERSION\}"', DOCKERFILE)
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M)
    assert cmd is not None
    assert yaml.safe_load(cmd[1]) == ["facespace-bridge", "addon"]
    assert [Path(TESTED_COMMAND[0]).name, *TESTED_COMMAND[1:]] == ["facespace-bridge", "addon"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["facespace-bridge"] == "facespace_bridge.cli:main"
