"""Settings declared once (facespace_bridge/settings.py): every sink's options come from its
settings class, and an option left out means exactly the class's default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from facespace_bridge.commands import run
from facespace_bridge.settings import cli_options, flag, from_options, option_name, setting
from facespace_bridge.sinks.file import FileSettings
from facespace_bridge.sinks.kafka import KafkaSettings
from facespace_bridge.sinks.mqtt import MqttSettings
from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistantSettings
from facespace_bridge.sinks.webhook import WebhookSettings

SINK_SETTINGS = [FileSettings, KafkaSettings, MqttSettings, HomeAssistantSettings, WebhookSettings]


def declared(cls: type) -> dict[str, object]:
    """The fields of `cls` that are options, with their defaults."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.metadata}


@pytest.mark.parametrize("cls", SINK_SETTINGS, ids=lambda cls: cls.__name__)
def test_an_option_left_out_is_the_settings_default(cls: type) -> None:
    with run.command.make_context("run", ["--broker", "file"]) as ctx:
        parsed = from_options(cls, ctx.params)
    built = from_options(cls, {})  # a configuration made without the CLI
    plain = cls()
    for name in declared(cls):
        assert getattr(parsed, name) == getattr(built, name) == getattr(plain, name), name
        assert option_name(cls, name) in ctx.params  # every setting is an option of `run`


def test_help_shows_the_one_default() -> None:
    params = {p.name: p for p in run.command.params if isinstance(p, click.Option)}
    for cls in SINK_SETTINGS:
        for name, default in declared(cls).items():
            option = params[option_name(cls, name)]
            if default is None or option.multiple:
                continue
            if option.default is None:  # given or not matters: the default is only shown
                assert option.help is not None and option.help.endswith(f"[default: {default}]"), name
            else:
                assert (option.default, option.show_default) == (default, True), name


@dataclass(frozen=True)
class Example:
    plain: int = 7  # not an option
    size: int = setting("--size", default=3, type=click.IntRange(min=1), help="How many.")
    expiry: int = setting("--expiry", default=60, cli_default=None, help="Only when given.")


def test_a_setting_is_a_field_and_an_option() -> None:
    @click.command()
    def command(**config: object) -> None:
        click.echo(repr(from_options(Example, config)))

    for option in reversed(cli_options(Example)):
        command = option(command)
    runner = CliRunner()
    assert runner.invoke(command, []).output.strip() == "Example(plain=7, size=3, expiry=60)"
    assert runner.invoke(command, ["--size", "5", "--expiry", "9"]).output.strip() == (
        "Example(plain=7, size=5, expiry=9)"
    )
    assert runner.invoke(command, ["--size", "0"]).exit_code == 2
    help_text = runner.invoke(command, ["--help"]).output
    assert "[default: 3; x>=1]" in help_text and "[default: 60]" in help_text
    assert (option_name(Example, "expiry"), flag(Example, "size")) == ("expiry", "--size")
    assert from_options(Example, {"size": None}, plain=1) == Example(plain=1)
