"""The filter options (`--camera-id`, `--exclude-camera`, `--person`, `--exclude-person`) of
`run`, `check` and `replay`: repeatable flags, TOML lists (and the single camera of old), the
environment's comma-separated lists and JSON arrays, and contradictions as bad input."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import click
import pytest

from facespace_bridge.commands import replay, run
from facespace_bridge.commands._common import entry_filter_from, prepare
from facespace_bridge.sinks.mqtt import MqttSink
from tests.commands.test_run_cli import cli, one_line_error

NFC = unicodedata.normalize("NFC", "Zoë Ångström")
NFD = unicodedata.normalize("NFD", "Zoë Ångström")
EXCLUDE = "FACESPACE_BRIDGE_EXCLUDE_PERSON"


def params(command: click.Command, args: list[str]) -> dict:
    with command.make_context(command.name or "", args) as ctx:
        return ctx.params


@pytest.mark.parametrize(
    ("args", "file", "env", "cameras", "excluded"),
    [
        (["--camera-id", "Front"], "", {}, {"Front"}, set()),  # the single camera of old
        (["--camera-id", "Front", "--camera-id", "Back door"], "", {}, {"Front", "Back door"}, set()),
        ([], 'camera_id = "Front"\n', {}, {"Front"}, set()),  # a file written before: still one camera
        ([], 'camera_id = ["Front", "Back"]\nexclude_person = ["Mary Ann Smith"]\n', {}, {"Front", "Back"},
         {"Mary Ann Smith"}),
        ([], "", {"FACESPACE_BRIDGE_CAMERA_ID": "Back door"}, {"Back door"}, set()),
        (["--exclude-camera", "Garage", "--exclude-camera", "Back door"], "", {}, set(), set()),
        ([], "", {EXCLUDE: f"Mary Ann Smith, {NFD}"}, set(), {"Mary Ann Smith", NFC}),
        ([], "", {EXCLUDE: '["Smith, Anne", "Björk"]'}, set(), {"Smith, Anne", "Björk"}),
        # flag beats env beats file, as for every option
        (["--exclude-person", "Björk"], "exclude_person = ['Eve']\n", {EXCLUDE: "Al"}, set(), {"Björk"}),
    ],
)  # fmt: skip
def test_filters_from_flags_file_and_environment(tmp_path, monkeypatch, args, file, env, cameras, excluded):
    monkeypatch.setenv("FACESPACE_API_KEY", "k")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "bridge.toml"
    config.write_text(file)
    base = ["--config", str(config), "--broker", "mqtt", *args]
    replayed = entry_filter_from(params(replay.command, [*base, "--start-time", "01/01/24"]))
    _, sinks, options = prepare(params(run.command, base))
    assert options.entry_filter.cameras == cameras
    assert options.entry_filter.exclude_people == excluded
    (sink,) = sinks
    assert isinstance(sink, MqttSink)
    assert sink.settings.excluded_people == excluded  # what the Home Assistant extension reads
    # and the cameras whose traces a start clears, by the sources' own rule
    assert sink.settings.kept_cameras == cameras
    assert sink.settings.excluded_cameras == options.entry_filter.exclude_cameras
    for camera in ("Front", "Back door", "Garage", "Hall"):
        assert sink.settings.camera_kept(camera) == options.entry_filter.camera_kept(camera)
    assert (replayed.cameras, replayed.exclude_people) == (cameras, excluded)


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--camera-id", "A", "--exclude-camera", "A"], {}, "--exclude-camera: 'A' is both kept"),
        (["--person", NFC, "--exclude-person", NFD], {}, "--exclude-person: 'Zoë Ångström' is both kept"),
        ([], {EXCLUDE: '["Smith, Anne"'}, "not a JSON array of names"),
        (["replay", "--start-time", "01/01/24", "--dry-run", "--person", ""], {}, "--person: must not be"),
    ],
)  # fmt: skip
def test_contradicting_filters_exit_2_with_one_line(tmp_path, args, env, needle):
    command = args if args[:1] == ["replay"] else ["run", "--broker", "file", "--output", "x.jsonl", *args]
    env = {**env, "FACESPACE_API_KEY": "k", "XDG_STATE_HOME": str(tmp_path / "state")}
    assert needle in one_line_error(cli(*command, env=env))
    assert not (tmp_path / "state").exists() and not Path("x.jsonl").exists()
