"""Fault injection: what goes wrong, how often, decided by a seeded RNG.

The same fault settings, seed and sequence of requests give the same faults. Changing
the settings (admin or `set_faults`) keeps the RNG's position unless `seed` changes.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

STOP_MESSAGE = "No cameras active..."
FAULT_KINDS = ("logs", "recognition")

# Values mixed into /logs replies by `malformed_rate`: none of them parses as an entry.
MALFORMED_SAMPLES: tuple[object, ...] = (
    "",
    "garbage",
    "Alice @ 25:61:00 23/10/23",
    "Bob @ 10:00:00 31/02/23",
    "@ 10:00:00 23/10/23",
    "Carol 10:00:00 23/10/23",
    "Dave @ 10:00 23/10/23",
    42,
    None,
    {"name": "Eve", "time": "10:00:00 23/10/23"},
    ["Frank", "10:00:00 23/10/23"],
)


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault settings. Rates are shares of requests (0..1) to the FaceSpace paths in `paths`;
    the admin API is never faulted."""

    error_rate: float = 0.0  # answered 500 or 503 with {"error": ...}
    throttle_rate: float = 0.0  # answered 429 with Retry-After
    drop_rate: float = 0.0  # connection closed without a reply
    retry_after: int = 1  # seconds, the Retry-After of a 429
    latency_ms: float = 0.0  # added before every faulted-path reply
    malformed_rate: float = 0.0  # per camera list of a /logs reply: one junk value mixed in
    flicker_rate: float = 0.0  # per present person in a /recognition reply: left out
    stop_signal: bool = False  # /recognition answers {"stop": ...}
    paths: tuple[str, ...] = FAULT_KINDS  # which of "logs", "recognition" the rates apply to
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("error_rate", "throttle_rate", "drop_rate", "malformed_rate", "flicker_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if self.error_rate + self.throttle_rate + self.drop_rate > 1.0:
            raise ValueError("error_rate + throttle_rate + drop_rate must not exceed 1")
        if self.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must not be negative")
        unknown = set(self.paths) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"paths must be among {', '.join(FAULT_KINDS)}, not {sorted(unknown)}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["paths"] = list(self.paths)
        return data

    def updated(self, changes: dict[str, Any]) -> Faults:
        """A copy with `changes` applied, type-checked (for JSON from the admin API)."""
        known = {f.name: f for f in fields(self)}
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(known)}")
            values[name] = _coerce(name, getattr(self, name), value)
        return replace(self, **values)


def _coerce(name: str, current: object, value: object) -> object:
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number")
        return float(value)
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of strings")
        return tuple(value)
    raise ValueError(f"{name} cannot be set")  # pragma: no cover


@dataclass(slots=True)
class Decision:
    """What happens to one request before it is served."""

    latency_s: float = 0.0
    outcome: str = "serve"  # serve | drop | throttle | error
    status: int = 200
    retry_after: int = 0


@dataclass(slots=True)
class ServedMalformed:
    request: int
    camera_id: str
    index: int
    value: object


@dataclass
class FaultInjector:
    """Holds the current `Faults` and the seeded RNG that turns rates into decisions."""

    faults: Faults = field(default_factory=Faults)
    served_malformed: deque[ServedMalformed] = field(default_factory=lambda: deque(maxlen=10_000))
    served_malformed_count: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(f"faults|{self.faults.seed}")
        self._requests = 0

    def set(self, faults: Faults) -> Faults:
        with self._lock:
            if faults.seed != self.faults.seed:
                self._rng = random.Random(f"faults|{faults.seed}")
            self.faults = faults
        return faults

    def update(self, **changes: Any) -> Faults:
        return self.set(self.faults.updated(changes))

    def decide(self, kind: str) -> tuple[int, Decision]:
        """The request number and the fate of one request to `kind` ("logs" | "recognition")."""
        with self._lock:
            self._requests += 1
            faults = self.faults
            decision = Decision(latency_s=faults.latency_ms / 1000.0)
            if kind in faults.paths and (faults.drop_rate or faults.throttle_rate or faults.error_rate):
                roll = self._rng.random()
                if roll < faults.drop_rate:
                    decision.outcome, decision.status = "drop", 0
                elif roll < faults.drop_rate + faults.throttle_rate:
                    decision.outcome, decision.status = "throttle", 429
                    decision.retry_after = faults.retry_after
                elif roll < faults.drop_rate + faults.throttle_rate + faults.error_rate:
                    decision.outcome = "error"
                    decision.status = 500 if self._rng.random() < 0.5 else 503
            return self._requests, decision

    def add_malformed(self, request: int, reply: dict[str, list[object]]) -> None:
        """Mix junk into some camera lists of a /logs reply (in place) and record it."""
        with self._lock:
            rate = self.faults.malformed_rate
            if not rate or "logs" not in self.faults.paths:
                return
            for camera_id in sorted(reply):
                if self._rng.random() >= rate:
                    continue
                items = reply[camera_id]
                index = int(self._rng.random() * (len(items) + 1))
                value = MALFORMED_SAMPLES[int(self._rng.random() * len(MALFORMED_SAMPLES))]
                items.insert(index, value)
                self.served_malformed.append(ServedMalformed(request, camera_id, index, value))
                self.served_malformed_count += 1

    def flicker(self, present: dict[str, list[str]]) -> dict[str, list[str]]:
        """Leave present people out of a /recognition reply at `flicker_rate`."""
        with self._lock:
            rate = self.faults.flicker_rate
            if not rate or "recognition" not in self.faults.paths:
                return present
            rand = self._rng.random
            return {camera: [p for p in people if rand() >= rate] for camera, people in present.items()}
