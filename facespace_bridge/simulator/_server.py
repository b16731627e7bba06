"""Running the simulator: inside an existing event loop (`AsyncSimulator`) or on a
background thread with its own loop (`SimulatorServer`, for sync tests and tools)."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from typing import Any

from aiohttp import web

from facespace_bridge.simulator._app import ADMIN_PREFIX, API_PREFIX, SimulatorApp
from facespace_bridge.simulator._faults import FaultInjector, Faults
from facespace_bridge.simulator._world import World, WorldConfig

DEMO_API_KEY = "demo-key"


def _make_world(world: World | WorldConfig | None, world_kwargs: dict[str, Any]) -> World:
    if isinstance(world, World):
        if world_kwargs:
            raise TypeError("pass either a World or world settings, not both")
        return world
    if isinstance(world, WorldConfig):
        if world_kwargs:
            raise TypeError("pass either a WorldConfig or world settings, not both")
        return World(world)
    return World(WorldConfig(**world_kwargs))


class AsyncSimulator:
    """The simulator served from the running event loop.

    `async with AsyncSimulator(seed=1, now=...) as sim:` then `sim.base_url`. Keyword
    arguments are `WorldConfig` fields; `faults` may be a `Faults` or a dict of its fields.
    """

    def __init__(
        self,
        world: World | WorldConfig | None = None,
        *,
        api_key: str = DEMO_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | dict[str, Any] | None = None,
        **world_kwargs: Any,
    ) -> None:
        self.world = _make_world(world, world_kwargs)
        if isinstance(faults, dict):
            faults = Faults().updated(faults)
        self.injector = FaultInjector(faults or Faults())
        self.api_key = api_key
        self.app = SimulatorApp(self.world, self.injector, api_key)
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.root_url = ""

    @property
    def base_url(self) -> str:
        """What clients use as the FaceSpace base URL, e.g. http://127.0.0.1:8123/facespace."""
        return f"{self.root_url}{API_PREFIX}"

    @property
    def admin_url(self) -> str:
        return f"{self.root_url}{ADMIN_PREFIX}"

    @property
    def port(self) -> int:
        return int(self.root_url.rsplit(":", 1)[1]) if self.root_url else self._port

    @property
    def faults(self) -> Faults:
        return self.injector.faults

    async def start(self) -> AsyncSimulator:
        # Short shutdown: a request held by latency must not keep a test (or Ctrl-C) waiting.
        runner = web.AppRunner(self.app.build(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self.root_url = f"http://{shown}:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> AsyncSimulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- conveniences shared with SimulatorServer -----------------------------------------------

    def set_faults(self, **changes: Any) -> Faults:
        """Change fault settings (fields of `Faults`); the others keep their values."""
        return self.injector.update(**changes)

    def reset_faults(self) -> Faults:
        return self.injector.set(Faults(seed=self.injector.faults.seed))

    def advance(self, seconds: float) -> None:
        """Move the simulated clock forward."""
        self.world.advance(seconds)

    def set_speed(self, speed: float) -> None:
        self.world.set_speed(speed)

    def now(self) -> datetime:
        return self.world.now()

    def insert(self, camera_id: str, person: str, seen_at: datetime | None = None) -> datetime:
        """A late insert (see `World.insert`)."""
        return self.world.insert(camera_id, person, seen_at)

    def stats(self) -> dict[str, dict[str, int]]:
        """Request counts: path -> status (or "dropped") -> count."""
        return {path: dict(counts) for path, counts in self.app.requests.items()}


class SimulatorServer:
    """The simulator on a background thread with its own event loop.

    `with SimulatorServer(seed=1, now=datetime(...), speed=0) as sim:` — or `start()` and
    `stop()`. Takes the arguments of `AsyncSimulator`; its methods are safe to call from
    any thread.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.simulator = AsyncSimulator(*args, **kwargs)
        self.world = self.simulator.world
        self.api_key = self.simulator.api_key
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    base_url = property(lambda self: self.simulator.base_url, doc=AsyncSimulator.base_url.__doc__)
    admin_url = property(lambda self: self.simulator.admin_url)
    root_url = property(lambda self: self.simulator.root_url)
    port = property(lambda self: self.simulator.port)
    faults = property(lambda self: self.simulator.faults)

    def set_faults(self, **changes: Any) -> Faults:
        """Change fault settings (fields of `Faults`); the others keep their values."""
        return self.simulator.set_faults(**changes)

    def reset_faults(self) -> Faults:
        return self.simulator.reset_faults()

    def advance(self, seconds: float) -> None:
        """Move the simulated clock forward."""
        self.simulator.advance(seconds)

    def set_speed(self, speed: float) -> None:
        self.simulator.set_speed(speed)

    def now(self) -> datetime:
        return self.simulator.now()

    def insert(self, camera_id: str, person: str, seen_at: datetime | None = None) -> datetime:
        """A late insert (see `World.insert`)."""
        return self.simulator.insert(camera_id, person, seen_at)

    def stats(self) -> dict[str, dict[str, int]]:
        """Request counts: path -> status (or "dropped") -> count."""
        return self.simulator.stats()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> SimulatorServer:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.simulator.start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.simulator.stop())
            # Requests still held (by latency) past the runner's shutdown timeout: cancel them.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        thread = threading.Thread(target=run, name="facespace-simulator", daemon=True)
        thread.start()
        started.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._loop = self._thread = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
