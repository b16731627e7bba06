"""Whose sightings leave the bridge: `--camera-id`, `--exclude-camera`, `--person` and
`--exclude-person` (docs/privacy.md, "Filters").

An entry is kept only if it passes every filter given: its camera is one of `--camera-id`
(when any is given) and none of `--exclude-camera`, its person one of `--person` (when any is
given) and none of `--exclude-person`. Camera ids are compared exactly. Names are compared
after Unicode NFC normalisation: the API may send `Zoë` with one code point for `ë` or with
`e` and a combining diaeresis, and a shell or a TOML file may hold either.

The sources apply the filter before anything is built from an entry (`sources/listing`,
`sources/realtime`), and the bridge before it announces anyone, so what is left out reaches
no sink, page, status document or log line. It is only counted, by reason (`counts`, which
`metrics` exposes as `facespace_bridge_filtered_total`): never by name.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from facespace_bridge.settings import NAMES, flag, setting

REASONS = ("camera", "person")  # the labels of facespace_bridge_filtered_total
_CACHE_LIMIT = 100_000  # names remembered with their verdict (a bound against an endless stream of names)


@dataclass(frozen=True)
class FilterSettings:
    """The filter options of `run`, `check` and `replay`: each repeatable, also a TOML list and
    a comma-separated (or JSON array) environment variable (settings.NameList)."""

    cameras: tuple[str, ...] = setting(
        "--camera-id",
        default=(),
        multiple=True,
        type=NAMES,
        metavar="ID",
        show_default=False,
        help="Only this camera; repeatable (default: every camera; any other announced to Home "
        "Assistant before is removed).",
    )
    exclude_cameras: tuple[str, ...] = setting(
        "--exclude-camera",
        default=(),
        multiple=True,
        type=NAMES,
        metavar="ID",
        show_default=False,
        help="Leave this camera out, its presence too (removed from Home Assistant if announced "
        "before); repeatable.",
    )
    people: tuple[str, ...] = setting(
        "--person",
        default=(),
        multiple=True,
        type=NAMES,
        metavar="NAME",
        show_default=False,
        help="Only this person's sightings and presence; repeatable (default: everyone; anyone "
        "else announced to Home Assistant before is removed). Exact names, compared after Unicode "
        "NFC normalisation (docs/privacy.md).",
    )
    exclude_people: tuple[str, ...] = setting(
        "--exclude-person",
        default=(),
        multiple=True,
        type=NAMES,
        metavar="NAME",
        show_default=False,
        help="Leave this person out everywhere: sinks, Home Assistant (removed if announced "
        "before), dead letters, the page, /status, logs; repeatable (docs/privacy.md).",
    )


class FilterError(ValueError):
    """Filters that contradict each other, or an empty name; `option` is the flag to blame."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def normalized(name: str) -> str:
    """The form in which names are compared (and kept by the bridge's filters): NFC."""
    return unicodedata.normalize("NFC", name)


def matching(names: Iterable[str], people: Collection[str]) -> list[str]:
    """Those of `names` (in whatever form the API sent them) that stand for one of `people`
    (NFC-normalised): how what the bridge holds by name finds a person it forgets."""
    return [name for name in names if normalized(name) in people]


def camera_passes(camera: str, cameras: Collection[str], exclude_cameras: Collection[str]) -> bool:
    """The camera filters' rule: one of `cameras` (when any is given) and none of
    `exclude_cameras`; ids compared exactly. The sources keep entries by it (`EntryFilter`), the
    MQTT sink clears at start what it left out (sinks/mqtt: `MqttSettings.camera_kept`)."""
    return (not cameras or camera in cameras) and camera not in exclude_cameras


class EntryFilter:
    """The filters given, and how many entries each reason left out (`counts`).

    A default `EntryFilter()` keeps everything (`active` is False), and the sources skip it."""

    def __init__(
        self,
        cameras: Iterable[str] = (),
        exclude_cameras: Iterable[str] = (),
        people: Iterable[str] = (),
        exclude_people: Iterable[str] = (),
    ) -> None:
        def checked(field: str, names: Iterable[str], normalise: bool) -> frozenset[str]:
            out = set()
            for name in names:
                if not name.strip():
                    raise FilterError(flag(FilterSettings, field), "must not be empty")
                out.add(normalized(name) if normalise else name)
            return frozenset(out)

        self.cameras = checked("cameras", cameras, False)
        self.exclude_cameras = checked("exclude_cameras", exclude_cameras, False)
        self.people = checked("people", people, True)
        self.exclude_people = checked("exclude_people", exclude_people, True)
        for kept, left_out, field in (
            (self.cameras, self.exclude_cameras, "exclude_cameras"),
            (self.people, self.exclude_people, "exclude_people"),
        ):
            both = sorted(kept & left_out)
            if both:
                include = flag(FilterSettings, "cameras" if field == "exclude_cameras" else "people")
                raise FilterError(
                    flag(FilterSettings, field),
                    f"{', '.join(map(repr, both))} is both kept ({include}) and left out",
                )
        self.active = bool(self.cameras or self.exclude_cameras or self.people or self.exclude_people)
        self.by_person = bool(self.people or self.exclude_people)
        self.counts: Counter[str] = Counter(dict.fromkeys(REASONS, 0))
        self._verdicts: dict[str, bool] = {}  # name as sent -> kept

    @classmethod
    def from_settings(cls, settings: FilterSettings) -> EntryFilter:
        return cls(settings.cameras, settings.exclude_cameras, settings.people, settings.exclude_people)

    @property
    def single_camera(self) -> str | None:
        """The one camera asked for, which the API can narrow its replies to; None otherwise."""
        if len(self.cameras) == 1:
            (camera,) = self.cameras
            return camera
        return None

    def renamed(self, rename: Callable[[str], str]) -> EntryFilter:
        """The same filters with each person's name as `rename` gives it (under --pseudonymize
        the sources see only pseudonyms, so the person filters match the names' pseudonyms)."""
        return EntryFilter(
            self.cameras,
            self.exclude_cameras,
            map(rename, self.people),
            map(rename, self.exclude_people),
        )

    def camera_kept(self, camera: str) -> bool:
        return camera_passes(camera, self.cameras, self.exclude_cameras)

    def person_kept(self, name: str) -> bool:
        """Whether `name` (as the API sent it) passes the person filters; a name's verdict is
        remembered, so a listing costs one dict lookup per entry."""
        verdict = self._verdicts.get(name)
        if verdict is None:
            form = normalized(name)
            verdict = (not self.people or form in self.people) and form not in self.exclude_people
            if len(self._verdicts) >= _CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[name] = verdict
        return verdict

    def raw_kept(self, raw: object) -> bool:
        """Whether a malformed entry (or a camera's malformed list) may become a dead letter: not
        when its text holds a name left out by `--exclude-person`, nor, with `--person`, unless
        it is one of those names followed by what should have been its stamp (its person is
        unknown; a dead letter holds its raw text). Merely holding a kept name is not enough:
        with `--person Ann`, "Anne @ junk" and "Mary Ann Smith @ junk" name someone else."""
        if not self.by_person:
            return True
        text = normalized(raw if isinstance(raw, str) else repr(raw))
        if any(name in text for name in self.exclude_people):
            return False
        if not self.people:
            return True
        name, separator, _ = text.rpartition("@")  # as an entry's name runs to its last "@"
        return bool(separator) and name.strip() in self.people

    def recognition(self, snapshot: Mapping[str, Any]) -> dict[str, Any]:
        """A `/recognition` reply without the cameras left out, and without the people left out
        of each camera's list (a name that is not a string is kept: it becomes a dead letter)."""
        if not self.active:
            return dict(snapshot)
        out: dict[str, Any] = {}
        for camera, names in snapshot.items():
            if not self.camera_kept(camera):
                continue
            if self.by_person and isinstance(names, list):
                names = [n for n in names if not isinstance(n, str) or self.person_kept(n)]
            out[camera] = names
        return out

    def left_out(self, reason: str, entries: int = 1) -> None:
        self.counts[reason] += entries
