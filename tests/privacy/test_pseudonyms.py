"""Keyed pseudonyms (`--pseudonymize`): the rule, the key checks, and the replies rewritten as the
client hands them on, so that the events built from them carry pseudonyms only."""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from datetime import datetime, timezone

import httpx
import orjson
import pytest

from facespace_bridge.client import AsyncLogsAPI, BadEntry, parse_entry
from facespace_bridge.client.entries import rename_listing
from facespace_bridge.events import PSEUDONYMOUS_SIGHTINGS, presence_event
from facespace_bridge.privacy.pseudonyms import (
    KEY_VARIABLE,
    MIN_KEY_BYTES,
    PseudonymKeyError,
    Pseudonyms,
    key_from_environment,
)
from facespace_bridge.schemas import validate
from facespace_bridge.sources.listing import number_listing

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
PSEUDONYM = re.compile(r"p_[0-9a-f]{20}")
T = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
NAMES = ["Alice", "Zoë  O'Brien @ Work 😀", "José", "李小龙"]


def entry(name: str, at: datetime = T) -> str:
    return f"{name} @ {at:%H:%M:%S %d/%m/%y}"


def test_a_pseudonym_is_p_and_20_hex_digits_of_the_hmac_of_the_nfc_name() -> None:
    pseudonyms = Pseudonyms(KEY)
    for name in NAMES:
        digest = hmac.new(KEY, unicodedata.normalize("NFC", name).encode(), hashlib.sha256).hexdigest()
        assert pseudonyms.of(name) == "p_" + digest[:20]
        assert PSEUDONYM.fullmatch(pseudonyms.of(name))


def test_stable_under_one_key_different_under_another() -> None:
    first, again, other = Pseudonyms(KEY), Pseudonyms(KEY), Pseudonyms(OTHER_KEY)
    assert [first.of(n) for n in NAMES] == [again.of(n) for n in NAMES]
    assert len({first.of(n) for n in NAMES}) == len(NAMES)
    assert not {first.of(n) for n in NAMES} & {other.of(n) for n in NAMES}


def test_nfc_variants_of_a_name_give_one_pseudonym() -> None:
    composed, decomposed = "Jos\u00e9 Zo\u00eb", "Jose\u0301 Zoe\u0308"
    assert composed != decomposed
    pseudonyms = Pseudonyms(KEY)
    assert pseudonyms.of(composed) == pseudonyms.of(decomposed)


def test_the_key_never_shows_in_a_repr() -> None:
    key = b"0123456789abcdef0123456789abcdef-secret"
    pseudonyms = Pseudonyms(key)
    assert "secret" not in repr(pseudonyms) and "0123" not in repr(pseudonyms)
    assert "secret" not in repr(pseudonyms.__dict__.get("_mac"))


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({}, f"--pseudonymize needs a key: set {KEY_VARIABLE}"),
        ({KEY_VARIABLE: ""}, f"--pseudonymize needs a key: set {KEY_VARIABLE}"),
        ({KEY_VARIABLE: "x" * (MIN_KEY_BYTES - 1)}, f"{KEY_VARIABLE} is too short"),
        ({KEY_VARIABLE: "é" * 15 + "x"}, f"{KEY_VARIABLE} is too short"),  # 16 characters, 31 bytes
    ],
)
def test_a_missing_or_short_key_is_refused_in_one_line(environ: dict[str, str], problem: str) -> None:
    with pytest.raises(PseudonymKeyError) as raised:
        key_from_environment(environ)
    assert str(raised.value).startswith(problem) and "\n" not in str(raised.value)
    with pytest.raises(PseudonymKeyError):
        Pseudonyms(b"x" * (MIN_KEY_BYTES - 1))


def test_a_key_of_32_bytes_is_taken_as_its_utf8_bytes() -> None:
    assert key_from_environment({KEY_VARIABLE: "é" * 16}) == ("é" * 16).encode()
    assert key_from_environment({KEY_VARIABLE: "x" * 32}) == b"x" * 32


# -- replies ---------------------------------------------------------------------------------------


def test_a_logs_reply_keeps_its_shape_with_every_name_a_pseudonym() -> None:
    pseudonyms = Pseudonyms(KEY)
    reply = {
        "Hall / Door #2": [entry(name) for name in NAMES],
        "Camera2": [
            "  Alice   @  1:02:03  4/5/23 ",  # an odd but readable form: written back canonical
            "Alice @ 25:61:00 31/02/23",  # an impossible stamp: the name goes, the stamp stays
            "Alice was here",  # unreadable: withheld
            "Alice @ Bob Smith",  # what follows the last " @ " is no stamp: withheld
            42,
            None,
            {"who": "Alice"},
        ],
        "Camera3": "Alice",  # not a list
        "Camera4": {"people": ["Alice"]},
    }
    out = rename_listing(reply, pseudonyms.of, pseudonyms.withheld)
    assert list(out) == list(reply)
    assert [len(v) for v in out.values() if isinstance(v, list)] == [4, 7]
    alice = pseudonyms.of("Alice")
    assert out["Hall / Door #2"] == [entry(pseudonyms.of(name)) for name in NAMES]
    assert out["Camera2"][:2] == [entry(alice, datetime(2023, 5, 4, 1, 2, 3)), f"{alice} @ 25:61:00 31/02/23"]
    assert out["Camera2"][2] == f"withheld {pseudonyms.of('Alice was here')}"
    assert out["Camera2"][3].startswith("withheld p_")
    assert out["Camera2"][4:6] == [42, None]
    assert out["Camera2"][6] == {"withheld": pseudonyms.of('{"who":"Alice"}')}
    assert out["Camera3"] == f"withheld {alice}"
    assert isinstance(out["Camera4"], dict) and set(out["Camera4"]) == {"withheld"}
    text = orjson.dumps(out).decode()
    for word in ("Alice", "Bob", "Zoë", "José", "李小龙", "was here"):
        assert word not in text
    # What stays unreadable is still told apart (distinct dead letters), and the reason survives.
    assert out["Camera2"][2] != out["Camera2"][3]
    reason = parse_entry("Camera2", out["Camera2"][1])
    assert isinstance(reason, BadEntry) and reason.reason.startswith("impossible timestamp")


async def test_the_client_hands_on_replies_with_pseudonyms_for_names() -> None:
    replies = {
        "/facespace/recognition": {"Camera1": ["Alice", "José"], "Camera2": [], "Camera3": ["Bob", 7]},
        "/facespace/logs": {"Camera1": [entry("Alice"), "Bob was here"]},
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=replies[request.url.path]))
    pseudonyms = Pseudonyms(KEY)
    client = AsyncLogsAPI("k", base_url="http://api.test/facespace", transport=transport, names=pseudonyms)
    try:
        assert await client.get_realtime() == {
            "Camera1": [pseudonyms.of("Alice"), pseudonyms.of("José")],
            "Camera2": [],
            "Camera3": [pseudonyms.of("Bob"), 7],
        }
        assert await client.get_logs_range("23/10/23") == {
            "Camera1": [entry(pseudonyms.of("Alice")), f"withheld {pseudonyms.of('Bob was here')}"]
        }
    finally:
        await client.aclose()


def test_events_of_a_pseudonymised_listing_are_v2_with_ids_over_the_pseudonym() -> None:
    pseudonyms = Pseudonyms(KEY)
    composed, decomposed = "Jos\u00e9", "Jose\u0301"
    reply = rename_listing(
        {"Camera1": [entry("Alice"), entry(composed), entry(decomposed)]}, pseudonyms.of, pseudonyms.withheld
    )
    events = [
        e for batch in number_listing(reply, None, None, encoder=PSEUDONYMOUS_SIGHTINGS) for e in batch.events
    ]
    jose = pseudonyms.of(composed)
    for event, (person, k) in zip(events, [(pseudonyms.of("Alice"), 0), (jose, 0), (jose, 1)], strict=True):
        fields = orjson.loads(event.payload)
        assert validate(fields) == []
        assert fields["schema"] == "facespace.sighting/v2" and fields["pseudonymous"] is True
        assert fields["person"] == event.person == person
        # k counts the person's earlier entries in that second: the NFC variants are one person,
        # so their two sightings keep two ids.
        id_text = orjson.dumps(["sighting", "Camera1", person, "2023-10-23T00:05:22Z", k])
        assert event.event_id == hashlib.sha256(id_text).hexdigest()[:32]
    assert b"Alice" not in b"".join(e.payload for e in events)


def test_a_pseudonymous_presence_is_v2_and_says_so() -> None:
    event = presence_event("Camera1", ["p_1"], ["p_1"], [], T, pseudonymous=True)
    fields = orjson.loads(event.payload)
    assert validate(fields) == []
    assert (fields["schema"], fields["pseudonymous"]) == ("facespace.presence/v2", True)
    plain = orjson.loads(presence_event("Camera1", ["A"], ["A"], [], T).payload)
    assert plain["schema"] == "facespace.presence/v1" and "pseudonymous" not in plain


def test_a_new_key_announces_everyone_to_home_assistant_under_new_ids() -> None:
    """docs/privacy.md, "Rotating the key": person devices and entities derive their ids from the
    pseudonym, so under another key they are new ones, and no id or topic spells the name."""
    from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant
    from facespace_bridge.sinks.mqtt.topics import TopicLayout

    def ids_and_topics(pseudonyms: Pseudonyms) -> set[str]:
        people = [pseudonyms.of(name) for name in NAMES]
        configs = HomeAssistant(TopicLayout("facespace")).configs(["Camera1"], people)
        person_configs = {
            t: orjson.loads(p) for t, p in configs.items() if "person_" in t or "occupancy_" in t
        }
        assert person_configs
        found = set(person_configs)
        for config in person_configs.values():
            found |= {config["unique_id"], config["object_id"]}
            found |= {v for k, v in config.items() if k.endswith("_topic") and "/person/" in v}
        return found

    first, second = ids_and_topics(Pseudonyms(KEY)), ids_and_topics(Pseudonyms(OTHER_KEY))
    assert not first & second
    text = " ".join(first | second)
    assert not any(name in text or name.split()[0].lower() in text.lower() for name in NAMES)


def test_under_pseudonyms_the_person_filters_match_the_names_pseudonyms() -> None:
    """The sources see only pseudonyms under --pseudonymize: --person and --exclude-person are
    matched as theirs (NFC variants included), cameras as they are (what run and replay do:
    commands/_common.filters_key_and_names)."""
    from facespace_bridge.commands._common import entry_filter_from

    pseudonyms = Pseudonyms(KEY)
    config = {
        "camera_id": (),
        "exclude_camera": ("Bedroom",),
        "person": (),
        "exclude_person": ("Jose\u0301",),
    }
    entry_filter = entry_filter_from(config).renamed(pseudonyms.of)
    assert not entry_filter.person_kept(pseudonyms.of("Jos\u00e9"))
    assert entry_filter.person_kept(pseudonyms.of("Alice"))
    assert not entry_filter.camera_kept("Bedroom") and entry_filter.camera_kept("Hall")
    only = entry_filter_from({**config, "exclude_person": (), "person": ("Alice",)}).renamed(pseudonyms.of)
    assert only.person_kept(pseudonyms.of("Alice")) and not only.person_kept("Alice")
