"""`facespace-bridge schemas list | show NAME[/vN] | validate FILE...`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import click
import orjson

from facespace_bridge import schemas


@click.group(name="schemas")
def command() -> None:
    """The payload schemas: list them, print one, validate payloads against them."""


@command.command(name="list")
def list_schemas() -> None:
    """Every schema and version, with the `schema` value payloads carry and the file."""
    for name, versions in schemas.catalogue().items():
        for schema in versions:
            click.echo(f"{name}\tv{schema.version}\t{schema.schema_id}\t{schema.path}")


@command.command()
@click.argument("name", metavar="NAME[/vN]")
def show(name: str) -> None:
    """Print a schema (the latest version unless /vN is given)."""
    try:
        schema = schemas.resolve(name)
    except schemas.SchemaNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    click.echo(schema.path.read_text(encoding="utf-8"), nl=False)


def _payloads(label: str, data: bytes) -> Iterator[tuple[str, Any]]:
    """(where, decoded payload or _NotJSON) for a JSON or JSON-lines file.

    A file that is one JSON document is one payload (`PATH`), a top-level array one per
    item (`PATH[i]`); otherwise every non-blank line is a payload (`PATH:LINE`).
    """
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    else:
        if isinstance(document, list):
            for index, item in enumerate(document):
                yield f"{label}[{index}]", item
        else:
            yield label, document
        return
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{label}:{number}", orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield f"{label}:{number}", _NotJSON(f"not JSON: {exc}")


class _NotJSON(str):
    """A line that did not parse, carried in place of its payload."""


@command.command()
@click.argument(
    "files",
    metavar="FILE...",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, readable=True, allow_dash=True),
)
@click.option("-q", "--quiet", is_flag=True, help="Print only the invalid payloads, no summary.")
@click.pass_context
def validate(ctx: click.Context, files: tuple[str, ...], quiet: bool) -> None:
    """Validate payloads (a JSON file, a JSON array, or JSON lines; '-' for stdin).

    Each payload is checked against the schema its own `schema` field names. Exit status 1
    when any payload is invalid; each is reported as PATH[:LINE]: REASON.
    """
    valid = invalid = 0
    for path in files:
        if path == "-":
            data, label = sys.stdin.buffer.read(), "<stdin>"
        else:
            with open(path, "rb") as handle:
                data, label = handle.read(), path
        for where, payload in _payloads(label, data):
            errors = [str(payload)] if isinstance(payload, _NotJSON) else schemas.validate(payload)
            if not errors:
                valid += 1
                continue
            invalid += 1
            for error in errors:
                click.echo(f"{where}: {error}")
    if not quiet:
        click.echo(f"{valid} valid, {invalid} invalid", err=True)
    if invalid:
        ctx.exit(1)
