"""Schema files, their lookup (checkout and wheel layouts), validation, and evolution rules."""

from __future__ import annotations

import re
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import orjson
import pytest

import facespace_bridge.schemas as schemas_module
from facespace_bridge.client.entries import LogEntry
from facespace_bridge.events import deadletter_event, presence_event, sighting_event
from facespace_bridge.schemas import (
    SchemaNotFoundError,
    catalogue,
    compiled,
    errors_against,
    load_schema,
    resolve,
    schema_root,
    validate,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = Path(__file__).resolve().parent / "data" / "schemas"
ALL_SCHEMAS = [s for versions in catalogue().values() for s in versions]


def _sighting(**changes: Any) -> dict[str, Any]:
    entry = LogEntry("Camera1", "Alice", datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc), "")
    return {**sighting_event(entry, 0).fields, **changes}


# -- the files -------------------------------------------------------------------------------------


def test_the_three_schemas_exist_in_version_1() -> None:
    found = {name: [s.version for s in versions] for name, versions in catalogue().items()}
    for name in ("sighting", "presence", "deadletter"):
        assert 1 in found.get(name, []), name


@pytest.mark.parametrize("schema", ALL_SCHEMAS, ids=lambda s: s.schema_id)
def test_schema_file_is_strict_2020_12(schema: schemas_module.SchemaFile) -> None:
    document = orjson.loads(schema.path.read_bytes())
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(document)
    assert document["$id"].endswith(f"{schema.name}/v{schema.version}")
    assert document["type"] == "object"
    assert document["additionalProperties"] is False
    # The `schema` field of a payload names this file (a later version also accepts older names).
    schema_field = document["properties"]["schema"]
    allowed = [schema_field["const"]] if "const" in schema_field else schema_field["enum"]
    assert schema.schema_id in allowed
    assert "schema" in document["required"]
    # Every timestamp carries its format, so format checking applies to it.
    for name, prop in document["properties"].items():
        if name.endswith("_at"):
            assert prop.get("format") == "date-time", name


def test_schema_ids_are_unique() -> None:
    ids = [orjson.loads(s.path.read_bytes())["$id"] for s in ALL_SCHEMAS]
    assert len(ids) == len(set(ids))


# -- finding them ------------------------------------------------------------------------------------


def test_checkout_root_is_the_top_level_schemas_folder() -> None:
    assert schema_root() == REPO / "schemas"


def test_lookup_in_an_installed_wheel_layout(tmp_path: Path) -> None:
    # site-packages/facespace_bridge/_schemas/<name>/v<N>.json, as pyproject force-includes it.
    package = tmp_path / "site-packages" / "facespace_bridge"
    package.mkdir(parents=True)
    shutil.copytree(REPO / "schemas", package / "_schemas")
    root = schema_root(package)
    assert root == package / "_schemas"
    installed = {n: [(s.version, s.path.read_bytes()) for s in v] for n, v in catalogue(root).items()}
    checkout = {n: [(s.version, s.path.read_bytes()) for s in v] for n, v in catalogue().items()}
    assert installed == checkout
    assert resolve("sighting/v1", root).path == package / "_schemas" / "sighting" / "v1.json"


def test_the_wheel_ships_the_schemas_where_the_loader_looks() -> None:
    # pyproject force-includes the checkout's schemas/ as <package>/_schemas, the first place
    # schema_root looks; a change to either side must change the other.
    with open(REPO / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)
    force_include = project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force_include["schemas"] == "facespace_bridge/_schemas"


def test_lookup_in_a_checkout_layout(tmp_path: Path) -> None:
    (tmp_path / "facespace_bridge").mkdir()
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    assert schema_root(tmp_path / "facespace_bridge") == tmp_path / "schemas"


def test_wheel_layout_wins_over_a_stray_schemas_folder(tmp_path: Path) -> None:
    package = tmp_path / "facespace_bridge"
    (package / "_schemas").mkdir(parents=True)
    (tmp_path / "schemas").mkdir()
    assert schema_root(package) == package / "_schemas"


def test_no_schemas_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "facespace_bridge").mkdir()
    with pytest.raises(SchemaNotFoundError, match="no schemas folder"):
        schema_root(tmp_path / "facespace_bridge")


def test_catalogue_ignores_files_that_are_not_versions(tmp_path: Path) -> None:
    (tmp_path / "thing").mkdir()
    (tmp_path / "thing" / "v2.json").write_text("{}")
    (tmp_path / "thing" / "v10.json").write_text("{}")
    (tmp_path / "thing" / "README.md").write_text("notes")
    (tmp_path / "thing" / "v1.json.bak").write_text("{}")
    (tmp_path / "Not A Name").mkdir()
    (tmp_path / "Not A Name" / "v1.json").write_text("{}")
    found = catalogue(tmp_path)
    assert list(found) == ["thing"]
    assert [s.version for s in found["thing"]] == [2, 10]  # numeric order, not text order
    assert resolve("thing", tmp_path).version == 10


@pytest.mark.parametrize("ref", ["sighting/v1", "facespace.sighting/v1", " sighting/v1 "])
def test_resolve_accepts_the_forms_a_user_types(ref: str) -> None:
    schema = resolve(ref)
    assert (schema.name, schema.version, schema.schema_id) == ("sighting", 1, "facespace.sighting/v1")
    assert schema.path == REPO / "schemas" / "sighting" / "v1.json"


def test_resolve_without_version_takes_the_latest() -> None:
    for name, versions in catalogue().items():
        assert resolve(name) == versions[-1]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nosuch", "unknown schema 'nosuch'"),
        ("sighting/v999", "unknown version v999 of schema 'sighting'"),
        ("sighting/1", "not a schema name"),
        ("../sighting", "not a schema name"),
        ("", "not a schema name"),
    ],
)
def test_resolve_rejects_unknown_names(ref: str, message: str) -> None:
    with pytest.raises(SchemaNotFoundError, match=re.escape(message)):
        resolve(ref)


def test_load_schema_reads_the_file() -> None:
    assert load_schema("presence/v1") == orjson.loads((REPO / "schemas/presence/v1.json").read_bytes())


def test_validators_are_compiled_once() -> None:
    assert compiled("facespace.sighting/v1") is compiled("facespace.sighting/v1")


# -- validating ------------------------------------------------------------------------------------


def test_a_built_sighting_is_valid_as_dict_bytes_and_text() -> None:
    payload = _sighting()
    assert validate(payload) == []
    assert validate(orjson.dumps(payload)) == []
    assert validate(orjson.dumps(payload).decode()) == []


def test_impossible_date_time_is_rejected_by_the_format_check() -> None:
    # This value matches the schema's shape pattern, so only a real date-time check rejects it.
    errors = validate(_sighting(seen_at="2023-13-45T99:00:00Z"))
    assert errors and all("date-time" in e for e in errors), errors
    assert errors[0].startswith("/seen_at: ")


def test_free_text_seen_at_is_rejected() -> None:
    errors = validate(_sighting(seen_at="yesterday"))
    assert any("date-time" in e for e in errors), errors


@pytest.mark.parametrize(
    "stamp", ["2023-10-23T00:05:22+01:00", "2023-10-23T00:05:22.5Z", "2023-10-23 00:05:22Z"]
)
def test_seen_at_must_be_utc_z_at_second_resolution(stamp: str) -> None:
    assert validate(_sighting(seen_at=stamp)), stamp


def test_presence_observed_at_format_is_checked() -> None:
    event = presence_event("C", ["A"], ["A"], [], datetime(2024, 1, 1, tzinfo=timezone.utc))
    assert validate(event.payload) == []
    assert any("date-time" in e for e in validate({**event.fields, "observed_at": "2024-02-30T00:00:00Z"}))


def test_unknown_and_missing_schema_fields_are_rejected() -> None:
    have = ", ".join(f"v{s.version}" for s in catalogue()["sighting"])
    assert validate(_sighting(schema="facespace.sighting/v99")) == [
        f"unknown schema 'facespace.sighting/v99' (have {have})"
    ]
    assert validate(_sighting(schema="facespace.nosuch/v1")) == [
        "unknown schema 'facespace.nosuch/v1' (no schema named 'nosuch')"
    ]
    assert validate(_sighting(schema="sighting")) == [
        "unknown schema 'sighting' (expected facespace.<name>/v<N>)"
    ]
    payload = _sighting()
    del payload["schema"]
    assert validate(payload) == ['missing \'schema\' field (e.g. "schema": "facespace.sighting/v1")']
    assert validate(_sighting(schema=1)) == ["'schema' field is a JSON number, not a string"]


def test_a_payload_naming_another_schema_is_checked_against_that_one() -> None:
    errors = validate(_sighting(schema="facespace.presence/v1"))
    assert any("people" in e for e in errors), errors


def test_additional_properties_are_rejected() -> None:
    errors = validate(_sighting(ingested_at="2023-10-23T00:05:22Z"))
    assert len(errors) == 1 and "ingested_at" in errors[0], errors


def test_missing_required_field_is_rejected() -> None:
    payload = _sighting()
    del payload["person"]
    assert any("person" in e for e in validate(payload))


def test_not_json_and_not_an_object_are_errors_not_exceptions() -> None:
    assert validate(b"{nope")[0].startswith("not JSON: ")
    assert validate(b"[1, 2]") == ["payload is a JSON array, not an object"]
    assert validate("null") == ["payload is a JSON null, not an object"]


def test_errors_against_a_named_schema_ignores_the_schema_field() -> None:
    assert errors_against("facespace.sighting/v1", _sighting()) == []
    assert errors_against("facespace.nosuch/v1", _sighting())[0].startswith("unknown schema")


# -- evolution: every version reads every older payload ----------------------------------------------


def _example_versions(examples: Path = EXAMPLES) -> dict[str, dict[int, list[Path]]]:
    """<examples>/<name>/v<N>/*.json, by name and version."""
    found: dict[str, dict[int, list[Path]]] = {}
    for folder in sorted(examples.glob("*/v*")):
        match = re.fullmatch(r"v([1-9][0-9]*)", folder.name)
        if match and folder.is_dir():
            found.setdefault(folder.parent.name, {})[int(match[1])] = sorted(folder.glob("*.json"))
    return found


def _evolution_failures(root: Path, examples: Path) -> tuple[int, list[str]]:
    """(payloads checked, failures) of: every schema version reads every example of its own and
    every older version. Compiled as the product compiles them (formats on)."""
    checked, failures = 0, []
    for name, versions in catalogue(root).items():
        by_version = _example_versions(examples).get(name, {})
        for newer in versions:
            validator = jsonschema_rs.validator_for(
                orjson.loads(newer.path.read_bytes()), validate_formats=True, ignore_unknown_formats=False
            )
            for older_version, paths in by_version.items():
                if older_version > newer.version:
                    continue
                for path in paths:
                    checked += 1
                    for error in validator.iter_errors(orjson.loads(path.read_bytes())):
                        failures.append(f"{newer.schema_id} rejects {path.name}: {error.message}")
    return checked, failures


def _built_examples() -> dict[str, list[dict[str, Any]]]:
    """Payloads the current builders make, one kind each (they carry the current versions)."""
    seen_at = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
    events = [
        sighting_event(LogEntry("Camera1", "Zoë @ Home", seen_at, ""), 3),
        presence_event("Camera1", {"B", "A"}, ["A"], ["C"], seen_at),
        deadletter_event(None, {"odd": [1]}, "why", "realtime", "facespace.sighting/v1"),
    ]
    built: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        built.setdefault(event.kind, []).append(orjson.loads(event.payload))
    return built


def test_every_schema_version_has_example_payloads() -> None:
    examples = _example_versions()
    for schema in ALL_SCHEMAS:
        paths = examples.get(schema.name, {}).get(schema.version, [])
        assert paths, f"add example payloads in tests/data/schemas/{schema.name}/v{schema.version}/"
    for name, versions in examples.items():
        for version in versions:
            resolve(f"{name}/v{version}")  # no examples for a schema that does not exist


def test_examples_validate_against_their_own_version() -> None:
    for name, versions in _example_versions().items():
        for version, paths in versions.items():
            for path in paths:
                payload = orjson.loads(path.read_bytes())
                assert payload["schema"] == f"facespace.{name}/v{version}", path
                assert validate(payload) == [], path


def test_every_version_validates_every_older_payload() -> None:
    checked, failures = _evolution_failures(schema_root(), EXAMPLES)
    assert failures == []
    assert checked >= len(ALL_SCHEMAS)


def _v2_world(tmp_path: Path, v2_changes: dict[str, Any]) -> tuple[Path, Path]:
    """A schema root with sighting v1 (the real one) and a v2 made from it, plus the real v1 examples."""
    root, examples = tmp_path / "schemas", tmp_path / "examples"
    (root / "sighting").mkdir(parents=True)
    shutil.copy(REPO / "schemas/sighting/v1.json", root / "sighting/v1.json")
    v2 = orjson.loads((REPO / "schemas/sighting/v1.json").read_bytes())
    v2["$id"] = v2["$id"].replace("/v1", "/v2")
    v2["properties"]["schema"] = {"enum": ["facespace.sighting/v1", "facespace.sighting/v2"]}
    v2["properties"]["confidence"] = {"type": "number"}
    for key, value in v2_changes.items():
        v2[key] = value
    (root / "sighting/v2.json").write_bytes(orjson.dumps(v2))
    shutil.copytree(EXAMPLES / "sighting" / "v1", examples / "sighting" / "v1")
    return root, examples


def test_evolution_check_accepts_a_v2_that_only_adds_an_optional_field(tmp_path: Path) -> None:
    checked, failures = _evolution_failures(*_v2_world(tmp_path, {}))
    assert failures == []
    assert checked == 2 * len(list((EXAMPLES / "sighting" / "v1").glob("*.json")))


def test_evolution_check_catches_a_v2_that_requires_a_new_field(tmp_path: Path) -> None:
    required = [*load_schema("sighting/v1")["required"], "confidence"]
    _, failures = _evolution_failures(*_v2_world(tmp_path, {"required": required}))
    assert failures and all("v2 rejects" in f and "confidence" in f for f in failures), failures


def test_built_payloads_validate_against_every_version_from_theirs_on() -> None:
    for kind, payloads in _built_examples().items():
        for payload in payloads:
            own = resolve(payload["schema"])
            for newer in catalogue()[kind]:
                if newer.version >= own.version:
                    assert errors_against(newer.schema_id, payload) == [], (newer.schema_id, payload)


# Keywords that relate one property to another, or the object's shape to its values. The
# sighting encoder validates a payload part by part (events.SightingEncoder), which is only the
# same as validating the whole payload while the sighting schema has none of these.
_RELATING_KEYWORDS = {
    "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
    "dependencies", "patternProperties", "propertyNames", "unevaluatedProperties", "minProperties",
    "maxProperties", "$ref", "$dynamicRef",
}  # fmt: skip


@pytest.mark.parametrize("version", [s.version for s in schemas_module.catalogue()["sighting"]])
def test_the_sighting_schema_constrains_each_property_on_its_own(version: int) -> None:
    document = load_schema(f"sighting/v{version}")

    def keywords(node: object) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for value in node.values() for k in keywords(value)}
        if isinstance(node, list):
            return {k for value in node for k in keywords(value)}
        return set()

    assert not keywords(document) & _RELATING_KEYWORDS
    assert document["additionalProperties"] is False and document["type"] == "object"
