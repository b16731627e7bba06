"""Camera and person names as MQTT topic segments and Home Assistant ids.

Names come from the API and may hold anything: `/`, `+`, `#`, control characters,
emoji. A name that is already a safe topic segment is used as is (readable topics);
any other name becomes its sanitised form plus `~` and a short hash of the original,
so two names never share a segment (short of a hash collision) and the mapping is
stable across runs and hosts. Because a plain segment never contains `~`, plain and
escaped segments cannot collide either. The original names stay in the payloads.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

# Camera ids share the first level under the prefix with these fixed levels.
RESERVED_CAMERA_SEGMENTS = frozenset({"person", "bridge", "deadletter"})

_ID_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")
# Latin letters that NFKD does not decompose into a base letter plus accents (so an ASCII
# fold would drop them: "Łukasz" -> "ukasz"), written as Home Assistant's slugify does.
_LATIN_EXTRA = str.maketrans({
    "Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "Đ": "D", "đ": "d", "Ħ": "H", "ħ": "h", "ı": "i",
    "ß": "ss", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Þ": "Th", "þ": "th", "Ð": "D", "ð": "d",
})  # fmt: skip


def short_hash(name: str, length: int = 8) -> str:
    """A stable hex digest of `name` (sha256, not Python's per-process `hash`)."""
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _unsafe_char(char: str) -> bool:
    # MQTT forbids NUL; `/` `+` `#` would split or wildcard the tree; control, format
    # and unassigned characters (category C*) are invisible or break tools.
    return char in "/+#~" or unicodedata.category(char).startswith("C")


def topic_segment(name: str, *, reserved: frozenset[str] = frozenset()) -> str:
    """`name` as one topic level: itself when safe, else sanitised + `~` + hash of the original."""
    if name and name not in reserved and not name.startswith("$") and not any(map(_unsafe_char, name)):
        return name
    cleaned = "".join("_" if _unsafe_char(c) else c for c in name).lstrip("$") or "_"
    return f"{cleaned}~{short_hash(name)}"


@lru_cache(maxsize=4096)  # computed per message otherwise; names repeat
def camera_segment(camera_id: str) -> str:
    return topic_segment(camera_id, reserved=RESERVED_CAMERA_SEGMENTS)


@lru_cache(maxsize=4096)
def person_segment(person: str) -> str:
    return topic_segment(person)


def id_slug(name: str) -> str:
    """`name` as a Home Assistant id part, `[a-zA-Z0-9_-]` only: itself when it already is one,
    else an ASCII fold plus `_` and a hash of the original (so `Zoë` and `Zoe` stay distinct)."""
    if name and not _ID_UNSAFE.search(name):
        return name
    folded = unicodedata.normalize("NFKD", name.translate(_LATIN_EXTRA)).encode("ascii", "ignore").decode()
    cleaned = _ID_UNSAFE.sub("_", folded).strip("_")
    return f"{cleaned}_{short_hash(name)}" if cleaned else short_hash(name)


def check_base_topic(value: str, what: str) -> str | None:
    """Why `value` cannot be a base topic (prefix), or None when it can."""
    if not value:
        return f"{what} must not be empty"
    if value.startswith("/") or value.endswith("/") or "//" in value:
        return f"{what} {value!r} must not start or end with '/' or have empty levels"
    if any(c in value for c in "+#\0"):
        return f"{what} {value!r} must not contain the wildcards '+' or '#'"
    if value.startswith("$"):
        return f"{what} {value!r} must not start with '$' (reserved for broker topics)"
    return None


def topics_overlap(a: str, b: str) -> bool:
    """True when one topic is the other or lies under it (`ha` and `ha/facespace`)."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


class TopicLayout:
    """Where each message goes under the base topic (docs/topics.md, docs/mqtt.md)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.bridge_state = f"{prefix}/bridge/state"
        self.deadletter = f"{prefix}/deadletter"

    def request(self, action: str) -> str:
        """Where the bridge takes requests (`forget`), as zigbee2mqtt's `bridge/request/...`."""
        return f"{self.prefix}/bridge/request/{action}"

    def response(self, action: str) -> str:
        """Where the bridge answers a request."""
        return f"{self.prefix}/bridge/response/{action}"

    def sighting(self, camera_id: str) -> str:
        return f"{self.prefix}/{camera_segment(camera_id)}/sighting"

    def presence(self, camera_id: str) -> str:
        return f"{self.prefix}/{camera_segment(camera_id)}/presence"

    def person(self, person: str) -> str:
        return f"{self.prefix}/person/{person_segment(person)}"

    def person_sighting(self, person: str) -> str:
        return f"{self.person(person)}/sighting"

    def person_tracker(self, person: str) -> str:
        """The state of the person's Home Assistant device tracker."""
        return f"{self.person(person)}/tracker"

    # Retained topics, for `mqtt-cleanup`: where they lie, and which the bridge would publish.

    def retained_filters(self) -> list[str]:
        return [f"{self.prefix}/+/presence", f"{self.prefix}/person/+"]

    def retained_topics(self, cameras: Iterable[str], people: Iterable[str]) -> set[str]:
        topics = {self.presence(c) for c in cameras} | {self.person(p) for p in people}
        return topics | {self.bridge_state}
