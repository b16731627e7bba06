"""`facespace-bridge schemas list | show | validate`, through the real entry point."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from facespace_bridge.cli import main
from facespace_bridge.client.entries import LogEntry
from facespace_bridge.events import deadletter_event, presence_event, sighting_event
from facespace_bridge.schemas import catalogue, resolve

T = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
Capture = pytest.CaptureFixture[str]


def _run(capsys: Capture, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["schemas", *args])
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0), out, err


def _payloads() -> list[bytes]:
    return [
        sighting_event(LogEntry("Camera1", "Zoë @ Home", T, ""), 0).payload,
        presence_event("Camera1", ["B", "A"], ["A"], [], T).payload,
        deadletter_event(None, "junk", "not an entry", "logs").payload,
    ]


def _bad_sighting() -> bytes:
    fields = dict(sighting_event(LogEntry("Camera1", "Alice", T, ""), 0).fields)
    fields["seen_at"] = "2023-13-45T99:00:00Z"
    return orjson.dumps(fields)


def test_list_names_every_schema_version(capsys: Capture) -> None:
    code, out, _ = _run(capsys, "list")
    assert code == 0
    rows = [line.split("\t") for line in out.splitlines()]
    expected = [
        [name, f"v{s.version}", s.schema_id, str(s.path)]
        for name, versions in catalogue().items()
        for s in versions
    ]
    assert rows == expected
    ids = {row[2] for row in rows}
    assert {"facespace.sighting/v1", "facespace.presence/v1", "facespace.deadletter/v1"} <= ids


@pytest.mark.parametrize("ref", ["sighting", "sighting/v1", "facespace.sighting/v1"])
def test_show_prints_the_schema(capsys: Capture, ref: str) -> None:
    code, out, _ = _run(capsys, "show", ref)
    assert code == 0
    assert out == resolve(ref).path.read_text(encoding="utf-8")
    assert orjson.loads(out)["properties"]["schema"]


@pytest.mark.parametrize("ref", ["nosuch", "sighting/v99", "Bad Name"])
def test_show_unknown_schema_is_one_line_exit_2(capsys: Capture, ref: str) -> None:
    code, out, err = _run(capsys, "show", ref)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("facespace-bridge: error: "), err


def test_validate_a_json_file(capsys: Capture, tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_bytes(orjson.dumps(orjson.loads(_payloads()[0]), option=orjson.OPT_INDENT_2))
    code, out, err = _run(capsys, "validate", str(path))
    assert (code, out) == (0, "")
    assert "1 valid, 0 invalid" in err


def test_validate_a_pretty_printed_bad_file_names_the_file(capsys: Capture, tmp_path: Path) -> None:
    pretty = tmp_path / "pretty.json"
    pretty.write_bytes(
        orjson.dumps(
            [orjson.loads(_payloads()[1]), orjson.loads(_bad_sighting())], option=orjson.OPT_INDENT_2
        )
    )
    broken = tmp_path / "broken.json"
    broken.write_bytes(b'{\n  "schema": "facespace.sighting/v1",\n  oops\n}\n')
    code, out, err = _run(capsys, "validate", str(pretty), str(broken))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{pretty}[1]: /seen_at: ")
    assert f"{broken}:1: not JSON" in out and f"{broken}:3: not JSON" in out
    assert "1 valid" in err


def test_validate_json_lines_and_a_json_array(capsys: Capture, tmp_path: Path) -> None:
    lines = tmp_path / "events.jsonl"
    lines.write_bytes(b"\n".join(_payloads()) + b"\n\n")
    array = tmp_path / "events.json"
    array.write_bytes(b"[" + b",".join(_payloads()) + b"]")
    code, out, err = _run(capsys, "validate", str(lines), str(array))
    assert (code, out) == (0, "")
    assert "6 valid, 0 invalid" in err


def test_validate_reports_each_bad_payload_and_exits_1(capsys: Capture, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"\n".join(_payloads()))
    bad = tmp_path / "bad.jsonl"
    extra = orjson.dumps({**orjson.loads(_payloads()[0]), "ingested_at": "now"})
    bad.write_bytes(b"\n".join([_payloads()[0], _bad_sighting(), b"{oops", extra, b'{"no": "schema"}']))
    code, out, err = _run(capsys, "validate", str(good), str(bad))
    assert code == 1
    lines = out.splitlines()
    assert all(line.startswith(f"{bad}:") for line in lines), lines
    assert any(line.startswith(f"{bad}:2: /seen_at: ") and "date-time" in line for line in lines)
    assert any(line.startswith(f"{bad}:3: not JSON") for line in lines)
    assert any(line.startswith(f"{bad}:4: ") and "ingested_at" in line for line in lines)
    assert any(line.startswith(f"{bad}:5: missing 'schema' field") for line in lines)
    assert "4 valid, 4 invalid" in err


def test_validate_array_items_are_located_by_index(capsys: Capture, tmp_path: Path) -> None:
    path = tmp_path / "array.json"
    path.write_bytes(b"[" + _payloads()[1] + b"," + _bad_sighting() + b"]")
    code, out, _ = _run(capsys, "validate", "--quiet", str(path))
    assert code == 1
    assert out.startswith(f"{path}:1[1]: /seen_at: ")


def test_validate_missing_file_is_one_line_exit_2(capsys: Capture, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_bytes(_payloads()[0])
    missing = tmp_path / "missing.json"
    code, out, err = _run(capsys, "validate", str(good), str(missing))
    assert code == 2
    assert out == ""  # nothing validated before the bad argument was found
    assert len(err.splitlines()) == 1 and str(missing) in err and err.startswith("facespace-bridge: error: ")


def test_validate_reads_stdin_in_a_real_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "facespace_bridge", "schemas", "validate", "-"],
        input=b"\n".join([*_payloads(), _bad_sighting()]),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout.decode().startswith("<stdin>:4: /seen_at: ")
    assert b"Traceback" not in done.stderr
    assert b"3 valid, 1 invalid" in done.stderr
