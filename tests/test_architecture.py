"""The layers of docs/architecture.md: a module imports only from its own layer or below.

Read from the source with `ast` (imports under `if TYPE_CHECKING:` are for type hints only
and do not count), so a new upward import fails here with the line that made it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "facespace_bridge"

# Lowest first, as the table in docs/architecture.md.
LAYERS: list[set[str]] = [
    {"_version", "backoff", "schemas", "settings", "simulator", "privacy"},
    {"client"},
    {"events", "cloudevents", "kafka", "whereabouts"},
    {"checkpoints", "sources"},
    {"sinks"},
    {"publisher", "metrics", "status", "web"},
    {"bridge"},
    {"commands", "cli", "embedded", "docgen", "__init__", "__main__"},
]
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """`facespace_bridge.sinks.mqtt` -> `sinks`; `facespace_bridge` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def runtime_imports(tree: ast.Module) -> list[tuple[int, str]]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "facespace_bridge":  # from facespace_bridge import cloudevents
                found += [(node.lineno, f"facespace_bridge.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "facespace_bridge"]


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in SOURCES}
    assert units - set(LAYER_OF) == set(), "add the new module to LAYERS and docs/architecture.md"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path):
    unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = []
    for line, name in runtime_imports(ast.parse(path.read_text())):
        target = unit_of(name)
        if target == "__init__" and name == "facespace_bridge" and unit != "__init__":
            continue  # the `from facespace_bridge import x` line itself; x is checked on its own
        if target != unit and LAYER_OF.get(target, 99) > LAYER_OF[unit]:
            upward.append(f"line {line}: {name} (layer {LAYER_OF.get(target)}) from layer {LAYER_OF[unit]}")
    assert not upward, "\n".join(upward)


def test_the_documented_layers_are_these():
    table = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for level, units in enumerate(LAYERS):
        row = next(line for line in table.splitlines() if line.startswith(f"| {level} |"))
        named = {part.strip("` /") for part in row.split("|")[2].split(",")}
        assert named == units, f"layer {level}: docs say {named}, the test {units}"


# The MQTT connection's parts, lowest first, as docs/architecture.md lists them: each imports
# only the ones before it, and none of them the connection or the sink on top.
MQTT_CONNECTION_PARTS = ["address", "driver", "outbox", "retained", "connection"]


def test_the_mqtt_connection_is_built_from_its_parts_upwards():
    package = "facespace_bridge.sinks.mqtt"
    upward = []
    for level, part in enumerate(MQTT_CONNECTION_PARTS):
        source = PACKAGE / "sinks" / "mqtt" / f"{part}.py"
        for line, name in runtime_imports(ast.parse(source.read_text())):
            if name == package or (name.startswith(f"{package}.") and name.split(".")[3] not in
                                   MQTT_CONNECTION_PARTS[:level]):  # fmt: skip
                upward.append(f"{part}.py line {line}: {name}")
    assert not upward, "\n".join(upward)
    listed = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    assert all(f"{part}.py`" in listed for part in MQTT_CONNECTION_PARTS)
