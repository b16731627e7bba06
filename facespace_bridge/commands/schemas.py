"""`facespace-bridge schemas list | show NAME[/vN] | validate FILE...`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

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


def _payloads(label: str, handle: BinaryIO) -> Iterator[tuple[str, Any]]:
    """(where, decoded payload or _NotJSON) for each payload of a JSON or JSON-lines file.

    JSON lines are read a line at a time, so a large file is never held whole: each
    non-blank line is a payload (`PATH:LINE`; a line holding an array, one per item,
    `PATH:LINE[i]`). A file whose first line is not JSON by itself is read whole as one
    document (pretty-printed JSON: `PATH`, or `PATH[i]` for the items of an array); if it
    is not that either, it is reported line by line.
    """
    lines = iter(handle)
    number = 0
    for first in lines:
        number += 1
        if first.strip():
            break
    else:
        return  # an empty file holds no payloads
    try:
        decoded = orjson.loads(first)
    except orjson.JSONDecodeError:
        data = first + b"".join(lines)
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            yield from _lines(label, data.splitlines(), number)
        else:
            yield from _items(label, document)
        return
    yield from _items(f"{label}:{number}", decoded)
    yield from _lines(label, lines, number + 1)


def _lines(label: str, lines: Iterable[bytes], first_number: int) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(lines, start=first_number):
        if not line.strip():
            continue
        try:
            decoded = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield f"{label}:{number}", _NotJSON(f"not JSON: {exc}")
        else:
            yield from _items(f"{label}:{number}", decoded)


def _items(where: str, decoded: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(decoded, list):
        for index, item in enumerate(decoded):
            yield f"{where}[{index}]", item
    else:
        yield where, decoded


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
        with click.open_file(path, "rb") as handle:
            label = "<stdin>" if path == "-" else path
            for where, payload in _payloads(label, handle):
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
