"""The web page in a real browser (Debian's Chromium, tests/fixtures/browser.py), served by a
bridge run as users run it (the CLI, in a subprocess) against the simulator over HTTP.

Everything is read from the page's DOM and compared with the simulator's ground truth (its
`/recognition`, `/admin/truth`), never with the bridge's own JSON. One browser and one
simulator for the module, one bridge for most tests (killed and started again in one), a
second with a password, a third with the MQTT sink (a real Mosquitto) that is asked to forget
someone; nginx in front of the first for the prefix test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from facespace_bridge.simulator import SimulatorServer, World, WorldConfig
from tests.fixtures.browser import Browser, Nginx, free_port, wait_for
from tests.fixtures.mqtt import MqttBroker

pytestmark = pytest.mark.timeout(300)

CLI = [sys.executable, "-m", "facespace_bridge"]
KEY = "page-test-key"
CAMERAS = ("Front Door", "Garden", "Garage")
SCREENSHOTS = "FACESPACE_BRIDGE_SCREENSHOTS"  # a directory: the screenshots are also copied there
UI = 20.0  # seconds the page may take to show something the bridge has (a bound, not a speed)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Truth:
    """The simulator's ground truth, over its HTTP API."""

    def __init__(self, sim: SimulatorServer) -> None:
        self.sim = sim

    def recognition(self) -> dict[str, list[str]]:
        reply = httpx.get(f"{self.sim.base_url}/recognition", headers={"x-api-key": KEY}, timeout=10)
        return dict(reply.json())

    def entries(self, start: datetime, end: datetime | None = None) -> list[tuple[str, str, str]]:
        """(camera, person, seen_at) of every history entry from `start` to `end` (inclusive)."""
        query = {"start": iso(start), **({"end": iso(end)} if end else {})}
        reply = httpx.get(f"{self.sim.admin_url}/truth", params=query, headers={"x-api-key": KEY}, timeout=30)
        return [tuple(item) for item in reply.json()["entries"]]

    def now(self) -> datetime:
        return utc(
            httpx.get(f"{self.sim.admin_url}/clock", headers={"x-api-key": KEY}, timeout=10).json()["now"]
        )

    def advance(self, seconds: float) -> None:
        httpx.post(
            f"{self.sim.admin_url}/clock", json={"advance": seconds}, headers={"x-api-key": KEY}, timeout=10
        )


class PageBridge:
    """`facespace-bridge run --web-port` in a subprocess: started, killed, started again."""

    def __init__(self, sim: SimulatorServer, workdir: Path, password: str | None = None) -> None:
        self.sim = sim
        self.workdir = workdir
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, *extra: str) -> PageBridge:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESPACE", "KAFKA", "MQTT"))}
        env |= {"FACESPACE_API_KEY": KEY, "FACESPACE_API_URL": self.sim.base_url}
        if self.password:
            env["FACESPACE_BRIDGE_WEB_PASSWORD"] = self.password
        command = [
            *CLI, "run", "--broker", "file", "--output", str(self.workdir / "out.jsonl"),
            "--checkpoint", str(self.workdir / "checkpoint.json"), "--web-port", str(self.port),
            "--refresh", "0.3", "--tail-interval", "0.5", "--presence-timeout", "1", "--api-timeout", "2",
            *extra,
        ]  # fmt: skip
        with open(self.workdir / "bridge.log", "ab") as log:
            self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)

        def serving() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the bridge exited {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                return httpx.get(self.url, timeout=2).status_code in (200, 401)
            except httpx.TransportError:
                return False

        wait_for(serving, 60, "the bridge serving its page")
        return self

    def log(self) -> str:
        return (self.workdir / "bridge.log").read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    # The clock starts at the real now, frozen: the bridge's "last 24 hours" are the world's,
    # and nothing changes until a test moves the clock. At about one moment in fifteen nobody
    # is in view in a given world, so the seed is the first from 5 whose world shows someone
    # now: the tests need presence to check, at whatever time they run.
    now = datetime.now(timezone.utc)
    shape = {"camera_ids": CAMERAS, "people": 8, "history_hours": 30.0, "visits_per_hour": 30.0}
    seed = next(
        seed for seed in range(5, 100)
        if any(World(WorldConfig(seed=seed, now=now, speed=0.0, **shape)).present().values())
    )  # fmt: skip
    server = SimulatorServer(seed=seed, now=now, speed=0.0, api_key=KEY, **shape).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bridge(sim: SimulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageBridge]:
    started = PageBridge(sim, tmp_path_factory.mktemp("bridge")).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def truth(sim: SimulatorServer) -> Truth:
    return Truth(sim)


def state_word(browser: Browser) -> str:
    return browser.text("#state-word")


def open_page(browser: Browser, url: str) -> None:
    browser.open(url)
    wait_for(
        lambda: state_word(browser) == "RUNNING" and browser.text("#link") == "Live", 60, "RUNNING and live"
    )
    browser.js("window.loadedOnce = 'yes'")  # gone if the page reloads


def in_view(browser: Browser) -> dict[str, list[str]]:
    return dict(
        browser.js("""
        const shown = {};
        for (const card of document.querySelectorAll('#camera-list [data-camera]')) {
          shown[card.dataset.camera] = [...card.querySelectorAll('.chips li')].map((li) => li.textContent);
        }
        return shown;""")
    )


def sightings(browser: Browser) -> list[tuple[str, str, str]]:
    rows = browser.js("""return [...document.querySelectorAll('#sightings-list li')].map(
        (li) => [li.dataset.camera, li.dataset.person, li.dataset.seenAt]);""")
    return [tuple(row) for row in rows]


def chart(browser: Browser) -> dict[str, dict[str, int]]:
    """hour -> camera -> count, from the chart's table."""
    return dict(
        browser.js("""
        const table = {};
        for (const row of document.querySelectorAll('#chart-table tbody tr')) {
          table[row.dataset.hour] = {};
          for (const cell of row.querySelectorAll('td[data-camera]')) {
            table[row.dataset.hour][cell.dataset.camera] = Number(cell.dataset.count);
          }
        }
        return table;""")
    )


def chart_truth(truth: Truth, hours: list[str]) -> dict[str, dict[str, int]]:
    start = utc(min(hours))
    counts = Counter(
        (iso(utc(seen_at).replace(minute=0, second=0)), camera)
        for camera, _, seen_at in truth.entries(
            start, start + timedelta(hours=len(hours)) - timedelta(seconds=1)
        )
    )
    return {hour: {camera: counts[(hour, camera)] for camera in CAMERAS} for hour in hours}


@dataclass(frozen=True)
class PageShown:
    """What the page shows: each person's last seen (camera, time), the sightings, who each
    camera sees, the chart's counts."""

    people: dict[str, tuple[str, str | None]]
    sightings: list[tuple[str, str, str]]
    in_view: dict[str, list[str]]
    chart: dict[str, dict[str, int]]

    @classmethod
    def read(cls, browser: Browser) -> PageShown:
        rows = browser.js("""return [...document.querySelectorAll('#people-table tbody tr')].map((tr) => [
            tr.dataset.person, tr.cells[2].textContent.split(' · ')[0],
            tr.cells[2].querySelector('[data-ago]')?.dataset.ago ?? null]);""")
        return cls(
            {name: (camera, seen_at) for name, camera, seen_at in rows},
            sightings(browser),
            in_view(browser),
            chart(browser),
        )

    def same_as(self, other: PageShown) -> bool:
        """Equal, the chart over the hours both show (it ends at the real clock's hour, which
        may move on between two reads)."""
        both = set(self.chart) & set(other.chart)
        return (
            len(both) >= len(other.chart) - 1
            and {hour: self.chart[hour] for hour in both} == {hour: other.chart[hour] for hour in both}
            and replace(self, chart={}) == replace(other, chart={})
        )

    def without(self, person: str) -> PageShown:
        return PageShown(
            {name: seen for name, seen in self.people.items() if name != person},
            [sighting for sighting in self.sightings if sighting[1] != person],
            {camera: [name for name in names if name != person] for camera, names in self.in_view.items()},
            self.chart,
        )


def screenshot(browser: Browser, directory: Path, name: str, *, dark: bool) -> None:
    path = browser.screenshot(directory / name, dark=dark)
    assert path.stat().st_size > 20_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wanted = os.environ.get(SCREENSHOTS)
    if wanted:
        shutil.copy(path, Path(wanted) / name)


# -- the tests, in this order: the later ones change the world ------------------------------


def test_cameras_people_chart_and_sightings_match_the_world(
    browser: Browser, bridge: PageBridge, truth: Truth, tmp_path: Path
) -> None:
    browser.requests()  # what came before this page is not its traffic
    browser._log.clear()
    open_page(browser, bridge.url)
    # Cameras, and who each sees now, as /recognition lists them.
    recognition = truth.recognition()
    assert any(recognition.values()), "the world should show someone somewhere"
    wait_for(
        lambda: in_view(browser) == {camera: sorted(people) for camera, people in recognition.items()},
        UI,
        f"the cameras and people of /recognition: {recognition}",
    )
    # People: everyone seen in the last day, with where and when they were last seen.
    now = truth.now()
    day = truth.entries(now - timedelta(hours=24), now)
    newest: dict[str, tuple[str, str]] = {}
    for camera, person, seen_at in day:
        if person not in newest or seen_at >= newest[person][0]:
            newest[person] = (seen_at, camera)

    def people() -> dict[str, tuple[str, str]]:
        rows = browser.js("""return [...document.querySelectorAll('#people-table tbody tr')].map((tr) => [
            tr.dataset.person, tr.cells[2].querySelector('[data-ago]')?.dataset.ago,
            tr.cells[2].textContent]);""")
        return {name: (ago, text.split(" · ")[0]) for name, ago, text in rows if ago}

    where: dict[str, set[str]] = {}
    for camera, names in recognition.items():
        for name in names:
            where.setdefault(name, set()).add(camera)

    def people_match() -> bool:
        shown = people()
        assert set(shown) == set(newest) | set(where), (sorted(shown), sorted(set(newest) | set(where)))
        for name, (seen_at, camera) in shown.items():
            if name in where:  # in view now: last seen now, at a camera that sees them
                assert camera in where[name] and seen_at >= newest.get(name, ("",))[0], name
            else:  # last seen as the history's newest entry says
                assert (seen_at, camera) == newest[name], name
        return True

    wait_for(people_match, UI, "people with their last seen")
    # The chart: per hour and camera, the world's history as the bridge read it at start.
    shown = wait_for(lambda: chart(browser) or None, UI, "the chart's table")
    assert len(shown) == 24
    assert shown == chart_truth(truth, sorted(shown))
    assert sum(sum(row.values()) for row in shown.values()) > 100
    # Recent sightings: the newest of the history, newest first.
    listed = wait_for(
        lambda: sightings(browser) if len(sightings(browser)) >= 200 else None, UI, "200 sightings"
    )
    assert [s[2] for s in listed] == sorted((s[2] for s in listed), reverse=True)
    everything = Counter(day)
    assert not Counter(listed) - everything  # every one listed is in the world
    oldest = listed[-1][2]
    assert Counter(e for e in day if e[2] > oldest) <= Counter(listed)  # and none newer is missing
    # Filtered by camera and by person.
    Select(browser.driver.find_element(By.ID, "filter-camera")).select_by_value("Garden")
    assert {s[0] for s in sightings(browser)} == {"Garden"}
    assert len(sightings(browser)) == sum(1 for s in listed if s[0] == "Garden")
    person = listed[0][1]
    Select(browser.driver.find_element(By.ID, "filter-person")).select_by_value(person)
    assert set(sightings(browser)) == {s for s in listed if s[0] == "Garden" and s[1] == person}
    Select(browser.driver.find_element(By.ID, "filter-camera")).select_by_value("")
    Select(browser.driver.find_element(By.ID, "filter-person")).select_by_value("")
    # The screenshots of docs/ (light and dark), from this run.
    screenshot(browser, tmp_path, "web-light.png", dark=False)
    screenshot(browser, tmp_path, "web-dark.png", dark=True)
    # Everything it loaded, the WebSocket too, came from the bridge.
    assert browser.hosts() == {f"127.0.0.1:{bridge.port}"}


def test_a_new_arrival_and_a_new_sighting_appear_without_a_reload(browser: Browser, truth: Truth) -> None:
    before_now = truth.now()
    before = truth.recognition()
    # Move the simulated clock until someone arrives somewhere and the history has new entries.
    for _ in range(60):
        truth.advance(20)
        now = truth.recognition()
        arrivals = {(c, p) for c, people in now.items() for p in people if p not in before.get(c, [])}
        fresh = truth.entries(before_now + timedelta(seconds=1))
        if arrivals and fresh:
            break
    else:
        raise AssertionError("the world had no arrival in 20 minutes")
    camera, person = sorted(arrivals)[0]
    wait_for(lambda: person in in_view(browser).get(camera, []), UI, f"{person} arriving at {camera}")
    wait_for(lambda: set(fresh) <= set(sightings(browser)), UI, f"the new sightings {fresh}")
    recognition = truth.recognition()  # and those who left are gone (after --presence-timeout)
    wait_for(lambda: in_view(browser) == {c: sorted(p) for c, p in recognition.items()}, UI, "who is in view")
    assert browser.js("return window.loadedOnce") == "yes"  # the same page: no reload


def test_a_degraded_bridge_says_what_is_wrong_in_plain_words(
    browser: Browser, sim: SimulatorServer, tmp_path: Path
) -> None:
    sim.set_faults(error_rate=1.0, paths=("logs",))
    try:
        wait_for(lambda: state_word(browser) == "DEGRADED", 60, "DEGRADED")
        problem = wait_for(lambda: browser.text("#problems li"), UI, "a problem")
        assert "The FaceSpace API does not answer for the sightings' history (/logs)" in problem
        assert "keeps asking" in problem and "Since" in problem
        colour = browser.js("return getComputedStyle(document.getElementById('state')).color")
        assert colour != browser.js("return getComputedStyle(document.getElementById('link')).color")
        screenshot(browser, tmp_path, "web-degraded.png", dark=False)
    finally:
        sim.reset_faults()


def test_the_page_says_it_lost_the_bridge_and_recovers_by_itself(
    browser: Browser, bridge: PageBridge, truth: Truth
) -> None:
    hours_before = chart(browser)
    bridge.kill()
    wait_for(lambda: browser.js("return !document.getElementById('lost').hidden"), UI, "the lost banner")
    assert "Lost the bridge" in browser.text("#lost")
    assert browser.text("#link") == "Reconnecting…"
    bridge.start()
    wait_for(
        lambda: (
            state_word(browser) == "RUNNING" and browser.js("return document.getElementById('lost').hidden")
        ),
        60,
        "the page back, RUNNING",
    )
    assert browser.text("#link") == "Live"
    assert browser.js("return window.loadedOnce") == "yes"  # it reconnected: no reload
    # After the restart the chart is filled again from the API's history, not empty.
    shown = wait_for(lambda: chart(browser) or None, UI, "the chart")
    assert shown == chart_truth(truth, sorted(shown))
    # (over the hours both show: the chart ends at the real clock's hour, which may have moved on)
    both = set(shown) & set(hours_before)
    assert len(both) >= len(hours_before) - 1
    assert sum(sum(shown[hour].values()) for hour in both) >= sum(
        sum(hours_before[hour].values()) for hour in both
    )


def test_behind_a_reverse_proxy_at_a_prefix(
    browser: Browser, bridge: PageBridge, truth: Truth, tmp_path: Path
) -> None:
    proxy = Nginx(bridge.url, "/some/prefix/", tmp_path / "nginx").start()
    try:
        browser.requests()
        browser._log.clear()
        open_page(browser, proxy.url)
        assert browser.js("return document.querySelector('base').getAttribute('href')") == "/some/prefix/"
        recognition = truth.recognition()
        wait_for(
            lambda: in_view(browser) == {camera: sorted(people) for camera, people in recognition.items()},
            UI,
            "the cameras through the proxy",
        )
        assert browser.hosts() == {f"127.0.0.1:{proxy.port}"}  # the page, its files and the WebSocket
        assert f"ws://127.0.0.1:{proxy.port}/some/prefix/api/live" in browser.requests()
        # (nginx logs a WebSocket when it closes; the files it served are there already)
        assert "GET /some/prefix/static/app.js" in (tmp_path / "nginx" / "access.log").read_text()
    finally:
        proxy.stop()


def test_a_password_guards_the_page(browser: Browser, sim: SimulatorServer, tmp_path: Path) -> None:
    guarded = PageBridge(sim, tmp_path / "guarded", password="correct horse").start("--web-host", "0.0.0.0")
    try:
        refused = httpx.get(guarded.url, timeout=10)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic ")
        assert httpx.get(guarded.url, auth=("anyone", "wrong"), timeout=10).status_code == 401
        open_page(browser, f"http://viewer:correct%20horse@127.0.0.1:{guarded.port}/")
        assert "correct horse" not in guarded.log()
    finally:
        guarded.stop()


def test_a_person_the_bridge_forgets_leaves_the_page_at_once(
    browser: Browser, sim: SimulatorServer, truth: Truth, mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    """`forget NAME` beside a bridge with the MQTT sink (a real Mosquitto): the open page drops
    them from its people, sightings, person filter and cameras without a reload, and all else
    (the chart's counts too) stays as it was; a page opened afterwards never has them."""
    forgetting = PageBridge(sim, tmp_path / "forgetting")
    forgetting.start("--broker", "mqtt", "--mqtt-url", mqtt_broker.url)
    try:
        open_page(browser, forgetting.url)
        recognition = truth.recognition()
        wait_for(
            lambda: in_view(browser) == {camera: sorted(people) for camera, people in recognition.items()},
            UI,
            "who is in view",
        )
        wait_for(lambda: len(sightings(browser)) >= 200, UI, "200 sightings")
        before = PageShown.read(browser)
        # Someone in view now if anyone is (the world is frozen: nobody comes or goes), with
        # sightings on the page.
        listed = {person for _, person, _ in before.sightings}
        in_view_now = {person for people in recognition.values() for person in people}
        forgotten = sorted(in_view_now & listed or listed)[0]
        assert forgotten in before.people

        done = subprocess.run(
            [*CLI, "forget", forgotten, "--mqtt-url", mqtt_broker.url],
            capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith(("FACESPACE", "MQTT"))},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "the running bridge forgot them" in done.stdout

        after = wait_for(
            lambda: shown if forgotten not in (shown := PageShown.read(browser)).people else None,
            UI,
            "them gone from the people",
        )
        assert after.same_as(before.without(forgotten))
        options = browser.js(
            "return [...document.querySelectorAll('#filter-person option')].map((o) => o.value)"
        )
        assert forgotten not in options and len(options) > 1
        assert browser.js("return window.loadedOnce") == "yes"  # the same page: no reload
        # What a page opening now gets (its snapshot).
        assert forgotten not in httpx.get(forgetting.url + "api/state", timeout=10).text
        assert forgotten not in forgetting.log()  # the bridge does not log whom it forgot
    finally:
        forgetting.stop()
