"""The simulator in a child process (`facespace-bridge simulate`), for benchmarks and tests
that must not share a CPU or a heap with what they measure."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Any


class SimulatorProcess:
    """`with SimulatorProcess(api_key="k", seed=7, cameras=4, speed=0, now=...) as sim: sim.base_url`.

    Keyword arguments become `simulate` flags (`visits_per_hour=10` → `--visits-per-hour 10`);
    `args` passes flags as they are typed.
    The key goes through the environment, never argv.
    """

    def __init__(self, api_key: str = "demo-key", *, args: Sequence[str] = (), **flags: Any) -> None:
        self.api_key = api_key
        simulate = ["-m", "facespace_bridge", "simulate", "--port", "0", "--log-level", "warning"]
        self.args = [sys.executable, *simulate, *args]  # `args`: flags as they are typed
        for name, value in flags.items():
            if value is not None:
                text = value.isoformat() if hasattr(value, "isoformat") else str(value)
                self.args += [f"--{name.replace('_', '-')}", text]
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def start(self) -> SimulatorProcess:
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "FACESPACE_API_KEY": self.api_key},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("FACESPACE_API_URL="):
            self.stop()
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.base_url = line.split("=", 1)[1]
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
