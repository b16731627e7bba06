"""User times, their exclusive upper bounds, and the wire parameters that enclose a range."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from facespace_bridge.client import DateParseError, InvalidUsageError, parse_user_time
from facespace_bridge.client._timefmt import wire_params

UTC = timezone.utc


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_day_first_is_strict() -> None:
    # The original parsed this month-first (2 January); the documented format is DD/MM/YY.
    assert parse_user_time("01/02/23") == at(2023, 2, 1)
    assert parse_user_time("13/02/23") == at(2023, 2, 13)
    assert parse_user_time("10:00 01/02/23") == at(2023, 2, 1, 10, 0)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("23/10/23", at(2023, 10, 23), at(2023, 10, 24)),
        ("10:15 23/10/23", at(2023, 10, 23, 10, 15), at(2023, 10, 23, 10, 16)),
        ("10:15:07 23/10/23", at(2023, 10, 23, 10, 15, 7), at(2023, 10, 23, 10, 15, 8)),
        ("23:59:59 31/12/23", at(2023, 12, 31, 23, 59, 59), at(2024, 1, 1)),
        ("  9:05:00   1/2/2023 ", at(2023, 2, 1, 9, 5), at(2023, 2, 1, 9, 5, 1)),
        ("2023-10-23", at(2023, 10, 23), at(2023, 10, 24)),
        ("2023-10-23T10:15", at(2023, 10, 23, 10, 15), at(2023, 10, 23, 10, 16)),
        ("2023-10-23T10:15:07", at(2023, 10, 23, 10, 15, 7), at(2023, 10, 23, 10, 15, 8)),
        ("2023-10-23T10:15:07Z", at(2023, 10, 23, 10, 15, 7), at(2023, 10, 23, 10, 15, 8)),
        ("2023-10-23T12:15:07+02:00", at(2023, 10, 23, 10, 15, 7), at(2023, 10, 23, 10, 15, 8)),
        ("2023-10-23 10:15:07.250", at(2023, 10, 23, 10, 15, 7, 250000), at(2023, 10, 23, 10, 15, 8)),
    ],
)
def test_formats_and_exclusive_end(text: str, start: datetime, end: datetime) -> None:
    assert parse_user_time(text) == start
    assert parse_user_time(text, end=True) == end
    assert parse_user_time(text).tzinfo is not None


def test_datetimes_naive_is_utc_and_aware_is_converted() -> None:
    assert parse_user_time(datetime(2023, 10, 23, 10, 15, 7)) == at(2023, 10, 23, 10, 15, 7)
    cet = timezone(timedelta(hours=1))
    assert parse_user_time(datetime(2023, 10, 23, 11, 15, tzinfo=cet)) == at(2023, 10, 23, 10, 15)
    # A datetime is an instant: its second is included, at one-second resolution.
    assert parse_user_time(datetime(2023, 10, 23, 10, 15, 7, 900), end=True) == at(2023, 10, 23, 10, 15, 8)
    assert parse_user_time(date(2023, 10, 23), end=True) == at(2023, 10, 24)


@pytest.mark.parametrize(
    "text",
    ["31/02/23", "10:61 23/10/23", "24:00 23/10/23", "", "tomorrow", "2023/10/23", "23-10-23", "10:00:00"],
)
def test_invalid_strings_name_the_accepted_formats(text: str) -> None:
    with pytest.raises(DateParseError) as info:
        parse_user_time(text)
    assert "HH:MM:SS DD/MM/YY" in str(info.value)
    assert "ISO 8601" in str(info.value)


@pytest.mark.parametrize("value", [1698055200, 3.5, None, ["23/10/23"]])
def test_wrong_types_are_usage_errors(value: object) -> None:
    with pytest.raises(InvalidUsageError):
        parse_user_time(value)  # type: ignore[arg-type]


def test_wire_params_enclose_the_range_in_whole_minutes() -> None:
    params, exact = wire_params(at(2023, 10, 23, 10, 15, 7), at(2023, 10, 23, 11, 0, 30))
    assert params == {"start_time": "10:15 23/10/23", "end_time": "11:00 23/10/23"}
    assert not exact


def test_wire_params_whole_days_use_the_originals_date_format() -> None:
    params, exact = wire_params(at(2023, 10, 23), at(2023, 10, 24))
    assert params == {"start_time": "23/10/23", "end_time": "23/10/23"}
    assert exact
    params, exact = wire_params(at(2023, 10, 23, 10, 0), at(2023, 10, 23, 10, 16))
    assert params == {"start_time": "10:00 23/10/23", "end_time": "10:15 23/10/23"}
    assert exact


def test_wire_params_leave_out_bounds_the_two_digit_year_cannot_say() -> None:
    params, exact = wire_params(at(1999, 5, 1), at(2100, 6, 1))
    assert params == {}
    assert exact
    assert wire_params(None, None) == ({}, True)
