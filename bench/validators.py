"""µs per event of the JSON Schema validators we could use, on a sighting-sized payload.

    .venv/bin/python bench/validators.py [--number N]

Every candidate validates the real schemas/sighting/v1.json with `date-time` really
checked; the "rejects bad date-time" column proves it (a payload whose `seen_at` is
2023-13-45T99:00:00Z passes the schema's pattern and only a format check catches it).
jsonschema checks `date-time` only when `rfc3339-validator` is installed: the script says
which. The last rows are the cost of what the bridge does per event with the winner.
Best of 5 repeats; figures are wall-clock µs per call on this machine.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import fastjsonschema
import jsonschema
import jsonschema_rs
import orjson

from facespace_bridge.client.entries import LogEntry
from facespace_bridge.events import sighting_event
from facespace_bridge.schemas import load_schema

BAD_SEEN_AT = "2023-13-45T99:00:00Z"


def _fastjsonschema_ok(validate: Callable[[Any], Any]) -> Callable[[dict[str, Any]], bool]:
    def check(payload: dict[str, Any]) -> bool:
        try:
            validate(payload)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    return check


def _per_call_us(call: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per repeat (default 20000)")
    args = parser.parse_args()
    number: int = args.number

    schema = load_schema("sighting/v1")
    entry = LogEntry("Camera1", "Alice Example", datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc), "")
    event = sighting_event(entry, 0)
    payload = dict(event.fields)
    bad = {**payload, "seen_at": BAD_SEEN_AT}

    rs = jsonschema_rs.validator_for(schema, validate_formats=True)
    rs_no_formats = jsonschema_rs.validator_for(schema)
    fjs = fastjsonschema.compile(schema)
    fjs_check = _fastjsonschema_ok(fjs)
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    py = jsonschema.Draft202012Validator(schema, format_checker=checker)
    py_checks_dates = "date-time" in checker.checkers

    few = max(number // 20, 100)  # jsonschema is ~100x slower: fewer calls, same precision
    rows: list[tuple[str, float, str]] = [
        (
            "jsonschema-rs (validate_formats=True)",
            _per_call_us(lambda: rs.is_valid(payload), number),
            str(not rs.is_valid(bad)),
        ),
        (
            "fastjsonschema (compiled)",
            _per_call_us(lambda: fjs_check(payload), number),
            str(not fjs_check(bad)),
        ),
        (
            "jsonschema (FormatChecker)",
            _per_call_us(lambda: py.is_valid(payload), few),
            str(not py.is_valid(bad)),
        ),
        (
            "jsonschema-rs, formats off (default; unsafe)",
            _per_call_us(lambda: rs_no_formats.is_valid(payload), number),
            str(not rs_no_formats.is_valid(bad)),
        ),
        (
            "bridge: sighting_event (parts cached and validated once)",
            _per_call_us(lambda: sighting_event(entry, 0), number),
            "",
        ),
        (
            "bridge: orjson.loads(payload) alone",
            _per_call_us(lambda: orjson.loads(event.payload), number),
            "",
        ),
    ]

    print(f"payload: {len(event.payload)} bytes, {len(payload)} fields; python {sys.version.split()[0]}")
    print(
        f"jsonschema checks date-time: {py_checks_dates} "
        f"({'rfc3339-validator installed' if py_checks_dates else 'install rfc3339-validator'})"
    )
    width = max(len(name) for name, _, _ in rows)
    print(f"{'candidate'.ljust(width)}  {'µs/event':>9}  rejects bad date-time")
    for name, micros, rejects in rows:
        print(f"{name.ljust(width)}  {micros:9.2f}  {rejects}")


if __name__ == "__main__":
    main()
