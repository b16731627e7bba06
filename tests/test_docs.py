"""The generated references (docs/cli.md, docs/configuration.md, docs/schema-reference.md) match
what the code renders now, every relative link in the docs and the README resolves, and every
flag, command, metric and topic a page names exists in the code."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import click
import pytest

from facespace_bridge import docgen

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "examples").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_generated_references_are_not_stale() -> None:
    rendered = docgen.render_all(REPO / "schemas")
    for relative, content in rendered.items():
        on_disk = (REPO / relative).read_text(encoding="utf-8")
        assert on_disk == content, f"{relative} is stale: run `make docs`"


def test_stale_detects_a_changed_schema(tmp_path: Path) -> None:
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    assert docgen.stale(tmp_path) == []
    schema = tmp_path / "schemas" / "sighting" / "v1.json"
    schema.write_text(schema.read_text().replace("The camera that saw the person", "The camera"))
    assert docgen.stale(tmp_path) == ["docs/schema-reference.md"]
    assert docgen.main(["--root", str(tmp_path), "--check"]) == 1
    assert docgen.main(["--root", str(tmp_path)]) == 0
    assert docgen.stale(tmp_path) == []


def test_configuration_reference_names_every_option_of_run() -> None:
    from facespace_bridge.commands.run import command

    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = text.split("## `facespace-bridge run`", 1)[1].split("\n## ", 1)[0]
    for param in command.params:
        if param.name != "help":
            assert f"`{param.opts[0]}`" in section, param.name
            if param.name != "config":
                assert f"`{param.name}` (" in section, param.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_home_assistant_example_uses_entities_the_bridge_announces() -> None:
    """The automation example's ids are those discovery gives the simulator's default world."""
    import orjson
    import yaml

    from facespace_bridge.simulator._world import World, WorldConfig
    from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant
    from facespace_bridge.sinks.mqtt.topics import TopicLayout

    world = World(WorldConfig())
    discovery = HomeAssistant(TopicLayout("facespace"))
    announced = {
        orjson.loads(config)["default_entity_id"]
        for config in discovery.configs(world.cameras(), world.people()).values()
    }
    text = (REPO / "examples" / "homeassistant" / "automations.yaml").read_text(encoding="utf-8")
    automations = yaml.safe_load(text)
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # ids, not the comments' patterns
    used = set(re.findall(r"\b(?:binary_sensor|sensor|event)\.facespace_[a-z0-9_]+", code))
    assert len(automations) >= 3 and len(used) >= 4
    assert used <= announced, sorted(used - announced)


def test_kafka_consumer_example_stores_each_event_id_once() -> None:
    import importlib.util
    import sqlite3

    spec = importlib.util.spec_from_file_location("kafka_consumer", REPO / "examples" / "kafka_consumer.py")
    assert spec and spec.loader
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    db = sqlite3.connect(":memory:")
    db.execute(example.SCHEMA)
    one = {"event_id": "a" * 32, "camera_id": "Camera1", "person": "Ann", "seen_at": "2023-10-23T00:00:00Z"}
    two = {**one, "event_id": "b" * 32}
    assert example.store(db, [one, two, one]) == [one, two]
    assert example.store(db, [two]) == []
    assert db.execute("SELECT count(*) FROM sightings").fetchone() == (2,)


def test_kafka_consumer_example_without_a_broker_says_so_in_one_line(tmp_path) -> None:
    import subprocess
    import sys

    from facespace_bridge.embedded import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "kafka_consumer.py"), "--bootstrap-servers", address,
         "--db", str(tmp_path / "sightings.db")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert (
        result.stderr
        == f"kafka_consumer.py: cannot read facespace.sightings from {address}: no broker answered\n"
    )


# -- names the docs use must exist in the code --------------------------------------------------

# Flags of other programs the pages show (docker, kubectl, pip, Tansu, noida, our bench scripts).
FOREIGN_FLAGS = {
    "--advertised-listener-url": "tansu",
    "--listener-url": "tansu",
    "--storage-engine": "tansu",
    "--db": "noida",
    "--name": "docker",
    "--build": "docker compose",
    "--profile": "docker compose",
    "--from-literal": "kubectl",
    "--wheel": "pip",
    "--producer-property": "kafka-console-producer",
}


def bridge_commands_and_flags() -> tuple[set[str], set[str]]:
    from facespace_bridge.cli import _register, cli

    _register()
    commands, flags = set(), {"--help"}

    def walk(command: click.Command) -> None:
        for param in command.params:
            flags.update(opt for opt in (*param.opts, *param.secondary_opts) if opt.startswith("--"))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                commands.add(name)
                walk(sub)

    walk(cli)
    return commands, flags


def test_docs_name_only_flags_and_commands_the_cli_has() -> None:
    commands, flags = bridge_commands_and_flags()
    unknown = []
    for page in PAGES:
        text = page.read_text()
        for flag in sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", text))):
            if flag not in flags and flag not in FOREIGN_FLAGS:
                unknown.append(f"{page.name}: {flag}")
        for command in sorted(set(re.findall(r"`facespace-bridge ([a-z][a-z-]+)", text))):
            if command not in commands:
                unknown.append(f"{page.name}: facespace-bridge {command}")
    assert not unknown, "docs name what the CLI does not have:\n" + "\n".join(unknown)


def test_docs_name_only_metrics_the_bridge_exports() -> None:
    from prometheus_client import generate_latest

    from facespace_bridge.metrics import Metrics

    metrics = Metrics()
    metrics.sink_connected.labels(sink="file")  # labelled metrics show once they have a child
    exported = set(re.findall(r"^# TYPE (\w+) (\w+)", generate_latest(metrics.registry).decode(), re.M))
    names = {name for name, _ in exported} | {f"{name}_total" for name, kind in exported if kind == "counter"}
    named = {
        (page.name, m) for page in PAGES for m in re.findall(r"facespace_bridge_[a-z_]+", page.read_text())
    }
    unknown = sorted(f"{page}: {metric}" for page, metric in named if metric not in names)
    assert not unknown, "docs name metrics the bridge does not export:\n" + "\n".join(unknown)


def test_docs_name_only_topics_the_code_uses() -> None:
    source = "\n".join(path.read_text() for path in (REPO / "facespace_bridge").rglob("*.py"))
    unknown = []
    for page in PAGES:
        text = page.read_text()
        # Kafka topics: the literal must be in the code (defaults, internal topics).
        for topic in set(re.findall(r"`(facespace(?:-bridge)?\.[a-z-]+)`", text)):
            if f'"{topic}' not in source:
                unknown.append(f"{page.name}: Kafka topic {topic}")
        # MQTT topics: every fixed segment must be one the topic layout writes.
        for topic in set(re.findall(r"`((?:facespace|homeassistant)/[^`\s]+)`", text)):
            for segment in topic.split("/")[1:]:
                if (
                    not segment.startswith("<")
                    and f'"{segment}' not in source
                    and f"/{segment}" not in source
                ):
                    unknown.append(f"{page.name}: MQTT topic {topic} ({segment})")
    assert not unknown, "docs name topics the code does not use:\n" + "\n".join(unknown)
