from facespace_bridge.sources.realtime import PresenceTracker


def test_first_snapshot_announces_every_camera_even_empty():
    tracker = PresenceTracker(presence_timeout=30)
    changes = tracker.update({"A": ["Bob", "Alice"], "B": []}, now=0)
    assert {(c, tuple(sorted(p))) for c, p, _, _ in changes} == {("A", ("Alice", "Bob")), ("B", ())}


def test_flicker_inside_the_timeout_changes_nothing_and_departure_follows_it():
    tracker = PresenceTracker(presence_timeout=30)
    tracker.update({"A": ["Alice"]}, now=0)
    assert tracker.update({"A": []}, now=10) == []  # missed by recognition, still present
    assert tracker.update({"A": ["Alice"]}, now=20) == []
    assert tracker.update({"A": []}, now=45) == []  # 25 s unseen
    [(camera, people, arrived, departed)] = tracker.update({"A": []}, now=51)
    assert (camera, people, arrived, departed) == ("A", frozenset(), frozenset(), {"Alice"})


def test_arrival_is_immediate():
    tracker = PresenceTracker(presence_timeout=30)
    tracker.update({"A": []}, now=0)
    [(_, people, arrived, departed)] = tracker.update({"A": ["Zoë Ångström"]}, now=1)
    assert people == arrived == {"Zoë Ångström"} and not departed
