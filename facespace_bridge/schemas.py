"""The payload schemas: finding the files, compiling validators, validating payloads.

One file per version, `<root>/<name>/v<N>.json` (JSON Schema 2020-12). A payload names
its schema in its `schema` field, `facespace.<name>/v<N>`. The root is the top-level
`schemas/` folder of a checkout, or `facespace_bridge/_schemas` inside an installed wheel
(pyproject force-includes the folder there).

Validation uses jsonschema-rs, compiled once per schema and cached: it measured fastest
(bench/validators.py). Format checks are switched on (`validate_formats=True`) — by
default jsonschema-rs skips `date-time`, which would let `"seen_at": "yesterday"` through.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson

PREFIX = "facespace."
# A schema id as payloads carry it: facespace.sighting/v1
SCHEMA_ID = re.compile(r"^facespace\.(?P<name>[a-z][a-z0-9_-]*)/v(?P<version>[1-9][0-9]*)$")
# What a user may type: sighting, sighting/v1, facespace.sighting/v1
_REF = re.compile(r"^(?:facespace\.)?(?P<name>[a-z][a-z0-9_-]*)(?:/v(?P<version>[1-9][0-9]*))?$")
_VERSION_FILE = re.compile(r"^v(?P<version>[1-9][0-9]*)\.json$")

_PACKAGE_DIR = Path(__file__).resolve().parent


class SchemaNotFoundError(LookupError):
    """No schema of that name or version (or no schemas folder at all)."""


@dataclass(frozen=True, slots=True)
class SchemaFile:
    """One schema version on disk."""

    name: str  # sighting
    version: int  # 1
    path: Path  # .../sighting/v1.json

    @property
    def schema_id(self) -> str:
        """What payloads put in their `schema` field: `facespace.sighting/v1`."""
        return f"{PREFIX}{self.name}/v{self.version}"


def schema_root(package_dir: Path | None = None) -> Path:
    """The folder holding `<name>/v<N>.json`, for the package at `package_dir` (default: this one).

    An installed wheel has it at `<package>/_schemas`; a checkout (editable install or
    plain `pythonpath=.`) has the top-level `schemas/` beside the package.
    """
    package_dir = package_dir or _PACKAGE_DIR
    for candidate in (package_dir / "_schemas", package_dir.parent / "schemas"):
        if candidate.is_dir():
            return candidate
    raise SchemaNotFoundError(
        f"no schemas folder: neither {package_dir / '_schemas'} nor {package_dir.parent / 'schemas'}"
    )


def catalogue(root: Path | None = None) -> dict[str, list[SchemaFile]]:
    """Every schema name (sorted) and its versions (ascending)."""
    root = root or schema_root()
    found: dict[str, list[SchemaFile]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and _REF.fullmatch(p.name)):
        versions = []
        for file in folder.iterdir():
            match = _VERSION_FILE.fullmatch(file.name)
            if match and file.is_file():
                versions.append(SchemaFile(folder.name, int(match["version"]), file))
        if versions:
            found[folder.name] = sorted(versions, key=lambda s: s.version)
    return found


def resolve(ref: str, root: Path | None = None) -> SchemaFile:
    """`sighting` (latest version), `sighting/v1` or `facespace.sighting/v1` → its file."""
    match = _REF.fullmatch(ref.strip())
    if match is None:
        raise SchemaNotFoundError(f"{ref!r} is not a schema name (NAME or NAME/vN, e.g. sighting/v1)")
    versions = catalogue(root).get(match["name"])
    if not versions:
        raise SchemaNotFoundError(f"unknown schema {match['name']!r}")
    if match["version"] is None:
        return versions[-1]
    wanted = int(match["version"])
    for schema in versions:
        if schema.version == wanted:
            return schema
    have = ", ".join(f"v{s.version}" for s in versions)
    raise SchemaNotFoundError(f"unknown version v{wanted} of schema {match['name']!r} (have {have})")


def load_schema(ref: str, root: Path | None = None) -> dict[str, Any]:
    """The parsed schema document for a reference as `resolve` takes it."""
    return orjson.loads(resolve(ref, root).path.read_bytes())


def compiled(schema_id: str) -> jsonschema_rs.Validator:
    """The compiled validator of a schema id (`facespace.sighting/v1`), built once per process."""
    found = _compiled_or_reason(schema_id)
    if isinstance(found, str):
        raise SchemaNotFoundError(found)
    return found


@functools.cache
def _compiled_or_reason(schema_id: str) -> jsonschema_rs.Validator | str:
    # Misses are cached too, so a stream of payloads naming an unknown schema costs no disk reads.
    match = SCHEMA_ID.fullmatch(schema_id)
    if match is None:
        return f"unknown schema {schema_id!r} (expected facespace.<name>/v<N>)"
    versions = catalogue().get(match["name"])
    if not versions:
        return f"unknown schema {schema_id!r} (no schema named {match['name']!r})"
    found = [s for s in versions if s.version == int(match["version"])]
    if not found:
        return f"unknown schema {schema_id!r} (have {', '.join(f'v{s.version}' for s in versions)})"
    document = orjson.loads(found[0].path.read_bytes())
    # ignore_unknown_formats=False: a misspelt format in a schema file fails here, not silently.
    return jsonschema_rs.validator_for(document, validate_formats=True, ignore_unknown_formats=False)


def _pointer(path: list[str | int]) -> str:
    return "/" + "/".join(str(part).replace("~", "~0").replace("/", "~1") for part in path)


def errors_against(schema_id: str, fields: Mapping[str, Any]) -> list[str]:
    """Errors of a decoded payload against one schema id, regardless of its `schema` field."""
    try:
        validator = compiled(schema_id)
    except SchemaNotFoundError as exc:
        return [str(exc)]
    instance = fields if isinstance(fields, dict) else dict(fields)
    if validator.is_valid(instance):  # the common case; collecting errors costs more
        return []
    return [
        f"{_pointer(error.instance_path)}: {error.message}" if error.instance_path else error.message
        for error in validator.iter_errors(instance)
    ]


def validate(payload: bytes | str | Mapping[str, Any]) -> list[str]:
    """Why a payload is invalid, by the schema its own `schema` field names; `[]` when valid.

    Never raises for bad input: undecodable JSON, a non-object, a missing or unknown
    `schema` field are all reported as errors.
    """
    if isinstance(payload, (bytes, bytearray, memoryview, str)):
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return [f"not JSON: {exc}"]
    if not isinstance(payload, Mapping):
        return [f"payload is a JSON {_json_type(payload)}, not an object"]
    schema_id = payload.get("schema")
    if schema_id is None:
        return ['missing \'schema\' field (e.g. "schema": "facespace.sighting/v1")']
    if not isinstance(schema_id, str):
        return [f"'schema' field is a JSON {_json_type(schema_id)}, not a string"]
    return errors_against(schema_id, payload)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return type(value).__name__
