"""The add-on's files against what the Supervisor accepts, as its own code validates them.

The rules below are home-assistant/supervisor's, read at commit 090ef31 (2026-08-21):
`supervisor/apps/validate.py` (`_SCHEMA_APP_CONFIG`, the deprecation advisories of
`_warn_app_config` and `_migrate_app_config`, `SCHEMA_APP_TRANSLATIONS`),
`supervisor/apps/options.py` (`RE_SCHEMA_ELEMENT`, the option types), `supervisor/store/data.py`
(`_find_app_configs`: every `config.yaml|yml|json` outside dot-folders and `rootfs/` is an
add-on), `supervisor/store/validate.py` (`SCHEMA_REPOSITORY_CONFIG`) and
`supervisor/apps/build.py` (build.yaml is deprecated: "Move build parameters into the
Dockerfile directly").
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Any

import yaml

from facespace_bridge._version import __version__
from facespace_bridge.commands import addon

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "addon"
CONFIG: dict[str, Any] = yaml.safe_load((ADDON / "config.yaml").read_text())
TRANSLATIONS: dict[str, Any] = yaml.safe_load((ADDON / "translations" / "en.yaml").read_text())

# _SCHEMA_APP_CONFIG's keys (it drops any other: extra=vol.REMOVE_EXTRA, so a typo is silent).
SUPERVISOR_KEYS = {
    "name", "version", "slug", "description", "arch", "machine", "url", "startup", "boot", "init",
    "advanced", "stage", "ports", "ports_description", "watchdog", "webui", "ingress", "ingress_port",
    "ingress_entry", "ingress_stream", "panel_icon", "panel_title", "panel_admin", "homeassistant",
    "host_network", "host_pid", "host_ipc", "host_uts", "host_dbus", "devices", "udev", "tmpfs", "map",
    "environment", "privileged", "apparmor", "full_access", "audio", "video", "gpio", "usb", "uart",
    "devicetree", "kernel_modules", "realtime", "hassio_api", "hassio_role", "homeassistant_api",
    "stdin", "legacy", "docker_api", "auth_api", "services", "discovery", "backup_exclude",
    "backup_pre", "backup_post", "backup", "options", "schema", "image", "ulimits", "timeout",
    "journald", "breaking_versions",
}  # fmt: skip
REQUIRED_KEYS = {"name", "version", "slug", "description", "arch"}
# What the current Supervisor warns about or migrates (advisories of _warn/_migrate_app_config).
DEPRECATED_KEYS = {
    "advanced", "codenotary", "auto_uart", "snapshot", "snapshot_exclude", "snapshot_pre",
    "snapshot_post",
}  # fmt: skip
ARCHES = {"aarch64", "amd64"}  # ARCH_ALL; armhf, armv7 and i386 are ARCH_DEPRECATED
RE_SLUG = re.compile(r"^[-_.A-Za-z0-9]+$")
RE_SERVICE = re.compile(r"^(?P<service>mqtt|mysql):(?P<rights>provide|want|need)$")
RE_WATCHDOG = re.compile(r"^(?:https?|\[PROTO:\w+\]|tcp):\/\/\[HOST\]:(\[PORT:\d+\]|\d+).*$")
RE_SCHEMA_ELEMENT = re.compile(
    r"^(?:"
    r"|bool"
    r"|email"
    r"|url"
    r"|port"
    r"|device(?:\((?P<filter>subsystem=[a-z]+)\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?"
    r"|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>-?\d+)?,(?P<i_max>-?\d+)?\))?"
    r"|float(?:\((?P<f_min>-?\d*\.?\d+)?,(?P<f_max>-?\d*\.?\d+)?\))?"
    r"|match\((?P<match>.*)\)"
    r"|list\((?P<list>.+)\)"
    r")\??$"
)
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")  # FILE_SUFFIX_CONFIGURATION


def test_config_has_only_keys_the_supervisor_knows_and_none_it_deprecates() -> None:
    assert REQUIRED_KEYS <= CONFIG.keys()
    assert CONFIG.keys() <= SUPERVISOR_KEYS, CONFIG.keys() - SUPERVISOR_KEYS
    assert not CONFIG.keys() & DEPRECATED_KEYS
    assert all(isinstance(CONFIG[key], str) and CONFIG[key] for key in ("name", "description"))
    assert CONFIG["name"] == "FaceSpace bridge"
    assert RE_SLUG.match(CONFIG["slug"]) and CONFIG["slug"] == "facespace_bridge"
    assert set(CONFIG["arch"]) == ARCHES  # both current architectures, no deprecated one
    assert CONFIG["startup"] in ("initialize", "system", "services", "application", "once")
    assert CONFIG["boot"] in ("auto", "manual", "manual_only")


def test_version_is_the_packages() -> None:
    assert isinstance(CONFIG["version"], str)  # a YAML number would lose "0.10" to 0.1
    assert CONFIG["version"] == __version__


def test_the_broker_ingress_and_watchdog_are_what_the_command_serves() -> None:
    assert all(RE_SERVICE.match(service) for service in CONFIG["services"])
    assert "mqtt:need" in CONFIG["services"]
    assert CONFIG["init"] is False  # the base image's s6-overlay is PID 1
    assert CONFIG["ingress"] is True
    assert CONFIG["ingress_port"] == addon.INGRESS_PORT
    assert CONFIG["panel_icon"].startswith("mdi:") and CONFIG["panel_title"]
    assert RE_WATCHDOG.match(CONFIG["watchdog"])
    assert CONFIG["watchdog"] == f"http://[HOST]:[PORT:{addon.INGRESS_PORT}]/healthz"
    assert "ports" not in CONFIG  # the page is reached through ingress only


def test_schema_types_are_the_supervisors_and_the_commands() -> None:
    schema = CONFIG["schema"]
    for name, kind in schema.items():
        if isinstance(kind, list):  # a list of one type; a list may not hold a list
            assert len(kind) == 1 and isinstance(kind[0], str) and RE_SCHEMA_ELEMENT.match(kind[0]), name
        else:
            assert isinstance(kind, str) and RE_SCHEMA_ELEMENT.match(kind), name
    assert schema == {option.name: option.schema for option in addon.ADDON_OPTIONS}


def test_default_options_are_valid_and_only_the_key_is_left_to_type() -> None:
    options, schema = CONFIG["options"], CONFIG["schema"]
    assert options.keys() <= schema.keys()
    required = {name for name, kind in schema.items() if isinstance(kind, str) and not kind.endswith("?")}
    assert required - options.keys() == {"api_key"}  # the Supervisor asks for it before a start
    for option in addon.ADDON_OPTIONS:
        if isinstance(option.schema, list):
            assert options[option.name] == []
    assert addon.OPTIONS_VALIDATOR.is_valid({**options, "api_key": "a-key-of-the-household"})


def test_translations_name_and_describe_every_option() -> None:
    assert TRANSLATIONS.keys() <= {"configuration", "network"}
    configuration = TRANSLATIONS["configuration"]
    assert configuration.keys() == CONFIG["schema"].keys()
    for name, words in configuration.items():
        assert words.keys() <= {"name", "description", "fields"}, name
        assert isinstance(words["name"], str) and words["name"], name
        assert isinstance(words["description"], str) and len(words["description"]) > 20, name


def test_no_other_file_is_an_add_on_config() -> None:
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "rootfs"]
        found += [
            Path(root, name).relative_to(REPO)
            for name in files
            if Path(name).stem == "config" and Path(name).suffix in CONFIG_SUFFIXES
        ]
    assert found == [Path("addon/config.yaml")]


def test_repository_file_and_no_build_file() -> None:
    repository = yaml.safe_load((REPO / "repository.yaml").read_text())
    assert repository.keys() <= {"name", "url", "maintainer"} and isinstance(repository["name"], str)
    assert not [path for path in ADDON.iterdir() if path.stem == "build"]
    dockerfile = (ADDON / "Dockerfile").read_text()
    assert re.search(r"^FROM ghcr\.io/home-assistant/base-python:3\.13-alpine3\.\d+$", dockerfile, re.M)
    assert "BUILD_FROM" not in dockerfile


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_icon_and_logo() -> None:
    assert png_size(ADDON / "icon.png") == (128, 128)  # HA's documented size; square
    width, height = png_size(ADDON / "logo.png")
    assert (width, height) == (250, 100)  # HA's documented recommendation


def test_documentation_tab_names_every_option() -> None:
    docs = (ADDON / "DOCS.md").read_text()
    for name in CONFIG["schema"]:
        assert f"`{name}`" in docs, name
    for present in ("CHANGELOG.md", "README.md", "DOCS.md"):
        assert (ADDON / present).is_file()
    assert f"## {__version__}" in (ADDON / "CHANGELOG.md").read_text()
