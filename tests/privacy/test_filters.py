"""The filters of privacy/filters.py: which cameras and people pass, NFC, malformed entries,
`/recognition` replies, and contradictions as bad input."""

from __future__ import annotations

import unicodedata

import pytest

from facespace_bridge.privacy.filters import EntryFilter, FilterError, FilterSettings, normalized

ZOE_NFC = unicodedata.normalize("NFC", "Zoë Ångström")
ZOE_NFD = unicodedata.normalize("NFD", "Zoë Ångström")


def test_the_two_forms_differ_as_bytes() -> None:
    assert ZOE_NFC != ZOE_NFD  # else the tests below would prove nothing
    assert normalized(ZOE_NFD) == ZOE_NFC


def test_no_filter_keeps_everything() -> None:
    entry_filter = EntryFilter()
    assert not entry_filter.active
    assert entry_filter.camera_kept("Camera1") and entry_filter.person_kept("Anyone")
    assert entry_filter.raw_kept("Anyone @ junk")
    assert entry_filter.single_camera is None


@pytest.mark.parametrize(("given", "sent"), [(ZOE_NFC, ZOE_NFD), (ZOE_NFD, ZOE_NFC), (ZOE_NFC, ZOE_NFC)])
def test_an_excluded_name_matches_in_either_form(given: str, sent: str) -> None:
    entry_filter = EntryFilter(exclude_people=[given])
    assert not entry_filter.person_kept(sent)
    assert not entry_filter.person_kept(sent)  # the remembered verdict, too
    assert entry_filter.person_kept("Zoe Angstrom")  # exact otherwise: no folding of accents
    assert entry_filter.person_kept("zoë ångström")  # nor of case


def test_people_kept_only_those_given() -> None:
    entry_filter = EntryFilter(people=[ZOE_NFD, "Björk"])
    assert entry_filter.person_kept(ZOE_NFC) and entry_filter.person_kept("Björk")
    assert not entry_filter.person_kept("Mary Ann Smith")
    assert not entry_filter.person_kept("Björk ")  # exact


def test_filters_combine() -> None:
    entry_filter = EntryFilter(
        cameras=["Camera1", "Camera2"], exclude_cameras=["Camera3"], exclude_people=["Björk"]
    )
    assert entry_filter.camera_kept("Camera1") and entry_filter.camera_kept("Camera2")
    assert not entry_filter.camera_kept("Camera3") and not entry_filter.camera_kept("Camera4")
    assert entry_filter.single_camera is None
    only = EntryFilter(cameras=["Camera2"], exclude_people=["Björk"])
    assert only.single_camera == "Camera2"
    assert EntryFilter(exclude_cameras=["Camera3"]).camera_kept("Camera9")


def test_camera_ids_are_compared_exactly() -> None:
    nfd_camera = unicodedata.normalize("NFD", "Café")
    entry_filter = EntryFilter(exclude_cameras=[nfd_camera])
    assert not entry_filter.camera_kept(nfd_camera)
    assert entry_filter.camera_kept(unicodedata.normalize("NFC", "Café"))


def test_a_malformed_entry_naming_someone_excluded_is_not_kept() -> None:
    entry_filter = EntryFilter(exclude_people=[ZOE_NFC])
    assert not entry_filter.raw_kept(f"{ZOE_NFD} @ 25:61:00 99/99/99")
    assert not entry_filter.raw_kept(f"{ZOE_NFC} @")
    assert not entry_filter.raw_kept({"who": ZOE_NFD})  # not a string: its text still names them
    assert entry_filter.raw_kept("Mary Ann Smith @ junk")
    assert entry_filter.raw_kept(12345)


def test_with_people_given_a_malformed_entry_is_kept_only_if_it_names_one() -> None:
    entry_filter = EntryFilter(people=["Björk"])
    assert entry_filter.raw_kept("Björk @ junk")
    assert not entry_filter.raw_kept("Mary Ann Smith @ junk")
    assert not entry_filter.raw_kept(12345)
    assert not entry_filter.raw_kept("Björk Smith @ junk")  # holds a kept name, names someone else
    assert not entry_filter.raw_kept("Anne Björk @ junk")
    assert not entry_filter.raw_kept({"who": "Björk", "and": "Mary Ann Smith"})
    assert EntryFilter(cameras=["Camera1"]).raw_kept(12345)  # camera filters say nothing of names


def test_recognition_leaves_out_cameras_and_people() -> None:
    entry_filter = EntryFilter(exclude_cameras=["Bedroom"], exclude_people=[ZOE_NFC])
    reply = {"Bedroom": ["Björk"], "Hall": [ZOE_NFD, "Björk", 7], "Door": [ZOE_NFC]}
    assert entry_filter.recognition(reply) == {"Hall": ["Björk", 7], "Door": []}
    assert EntryFilter().recognition(reply) == reply


def test_counts_start_at_zero_per_reason() -> None:
    entry_filter = EntryFilter(exclude_people=["A"])
    assert dict(entry_filter.counts) == {"camera": 0, "person": 0}
    entry_filter.left_out("person", 3)
    assert entry_filter.counts["person"] == 3


@pytest.mark.parametrize(
    ("kwargs", "option", "words"),
    [
        ({"cameras": ["A"], "exclude_cameras": ["A"]}, "--exclude-camera", "'A' is both kept (--camera-id)"),
        ({"people": [ZOE_NFC], "exclude_people": [ZOE_NFD]}, "--exclude-person", "is both kept (--person)"),
        ({"people": [""]}, "--person", "must not be empty"),
        ({"exclude_people": ["  "]}, "--exclude-person", "must not be empty"),
        ({"cameras": [""]}, "--camera-id", "must not be empty"),
    ],
)
def test_contradictions_are_errors_that_name_the_option(kwargs: dict, option: str, words: str) -> None:
    with pytest.raises(FilterError) as caught:
        EntryFilter(**kwargs)
    assert caught.value.option == option
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_from_settings() -> None:
    settings = FilterSettings(cameras=("C1",), exclude_people=(ZOE_NFD,))
    entry_filter = EntryFilter.from_settings(settings)
    assert entry_filter.cameras == {"C1"} and entry_filter.exclude_people == {ZOE_NFC}
