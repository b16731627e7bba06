"""The generated references (docs/cli.md, docs/configuration.md, docs/schema-reference.md) match
what the code renders now, and every relative link in the docs and the README resolves."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

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
    from facespace_bridge.sinks._topics import TopicLayout
    from facespace_bridge.sinks.homeassistant import HomeAssistantDiscovery

    world = World(WorldConfig())
    discovery = HomeAssistantDiscovery(TopicLayout("facespace"))
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
