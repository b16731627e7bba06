"""Every example of the original `facespace` 0.1.2 README, run against the simulator.

The snippets are the README's text with one change, the import line
(`from facespace import ...` → `from facespace_bridge import ...`). The harness around
them sets FACESPACE_API_KEY / FACESPACE_API_URL, supplies `logging` (the README uses
`logging.DEBUG` without importing it), fills the error-handling example's `# ...`
placeholder, and ends the endless realtime loops from outside — by switching on the
simulator's stop reply — so the code itself is unchanged.
"""

from __future__ import annotations

import ast
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from facespace_bridge.simulator import SimulatorServer

SETUP = """
from facespace_bridge import LogsAPI, FaceSpaceError
import os

# Utilize an environment variable for your API key to enhance security.
api_key = os.getenv('FACESPACE_API_KEY')
client = LogsAPI(api_key=api_key)
"""

BASIC_RETRIEVAL = """
# Retrieve logs for a specified time range and camera.
start_time = '10:00:00 23/10/23'  # Start of the log retrieval period.
end_time = '24/10/23'             # End of the log retrieval period.
camera_id = 'TestCamera'          # Identifier for the camera.

logs = client.get_logs_range(start_time=start_time, end_time=end_time, camera_id=camera_id)
print(logs)
"""

ADVANCED_RETRIEVAL = """
# Fetch logs with additional configurations.
client = LogsAPI(
    api_key=api_key,
    log_to_file=True,  # This enables the logging of data to a file.
    webhook_url='https://yourwebhook.url',  # Logs will be posted to this webhook URL.
    additional_headers={'Custom-Header': 'Value'},  # Custom headers included in the webhook post.
    post_realtime=False  # Determines whether real-time logs are posted to the webhook.
)

logs = client.get_logs_range(start_time=start_time, end_time=end_time)
print(logs)
"""

REALTIME_BASIC = """
# Stream real-time logs using a context manager.
with client:
    for log in client.get_realtime_logs(refresh=1.0):  # Refresh rate set to 1 second.
        print(log)
"""

REALTIME_LIMITED = """
# Stream a limited number of real-time logs.
for log in client.get_realtime_logs(refresh=0.5, limit=10):  # Fetch 10 logs with a half-second pause.
    print(log)
"""

REALTIME_FAST = """
# Stream real-time logs at a high refresh rate.
for log in client.get_realtime_logs(refresh=0.1):  # Set a very fast refresh rate.
    print(log)
"""

# The README's `try:` holds only `# Attempt to fetch logs or stream real-time logs.` and
# `# ...`, which is not valid Python; the placeholder is filled with a failing call.
ERROR_HANDLING = """
try:
    # Attempt to fetch logs or stream real-time logs.
    # ...
    {placeholder}
except FaceSpaceError as e:
    print(f'Error occurred: {{e}}')
    client.stop_realtime_logs()  # Properly stop the real-time log stream.
"""

WEBHOOK_CONFIGURATION = """
client = LogsAPI(
    api_key=api_key,
    webhook_url='https://yourwebhook.url',  # Your webhook endpoint.
    additional_headers={'Custom-Header': 'Value'},  # Any additional headers you require.
    post_logs=True  # Enable posting logs to the webhook URL.
)
"""

FILE_LOGGING = """
client = LogsAPI(
    api_key=api_key,
    log_to_file=True,  # Enable file logging.
    log_level=logging.DEBUG  # Set log level to DEBUG for verbose output.
)
"""

WHOLE_DAY = """
from facespace_bridge import LogsAPI, FaceSpaceError
import os

# Initialize the client with your API key
api_key = os.getenv('YOUR_API_KEY')
client = LogsAPI(api_key=api_key)

# Define the date for which you want to fetch logs
# The time is omitted, so logs from the start to the end of the day are fetched.
date = '23/10/23'  # Format: DD/MM/YY

try:
    # Fetch logs for the entire day for a specific camera.
    camera_id = 'TestCamera'
    logs = client.get_logs_range(start_time=date, end_time=date, camera_id=camera_id)
    print(logs)

    # If camera_id is not provided, logs for all cameras will be fetched.
    all_camera_logs = client.get_logs_range(start_time=date, end_time=date)
    print(all_camera_logs)

except FaceSpaceError as e:
    print(f'An error occurred: {e}')
    # Additional error handling can be implemented here.
"""

UTC = timezone.utc


def truth(
    sim: SimulatorServer, start: datetime, last: datetime, camera: str | None = None
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for cam, person, seen_at in sim.world.entries(start, last, camera):
        out.setdefault(cam, []).append(f"{person} @ {seen_at:%H:%M:%S %d/%m/%y}")
    return out


@pytest.fixture
def readme_env(
    simulator: SimulatorServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> SimulatorServer:
    monkeypatch.setenv("FACESPACE_API_KEY", simulator.api_key)
    monkeypatch.setenv("FACESPACE_API_URL", simulator.base_url)
    monkeypatch.delenv("YOUR_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # log_to_file writes into the working directory
    return simulator


def run(code: str, namespace: dict[str, object], capsys: pytest.CaptureFixture[str]) -> list[object]:
    """Execute a snippet; return what it printed, each line read back as a Python literal."""
    exec(compile(code, "<README>", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    return [ast.literal_eval(line) if line.startswith("{") else line for line in printed]


def stop_reply_after(sim: SimulatorServer, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, sim.set_faults, kwargs={"stop_signal": True})
    timer.start()
    return timer


def test_readme_session(readme_env: SimulatorServer, capsys: pytest.CaptureFixture[str]) -> None:
    sim = readme_env
    namespace: dict[str, object] = {"logging": logging}
    present = sim.world.present()
    range_truth = truth(
        sim, datetime(2023, 10, 23, 10, tzinfo=UTC), datetime(2023, 10, 24, 23, 59, 59, tzinfo=UTC)
    )

    assert run(SETUP, namespace, capsys) == []
    assert run(BASIC_RETRIEVAL, namespace, capsys) == [{"TestCamera": range_truth["TestCamera"]}]

    assert run(ADVANCED_RETRIEVAL, namespace, capsys) == [range_truth]
    assert len(list(Path.cwd().glob("facespace_log_*.log"))) == 1  # log_to_file

    timer = stop_reply_after(sim, 2.5)
    printed = run(REALTIME_BASIC, namespace, capsys)
    timer.join()
    assert 1 <= len(printed) <= 4 and all(p == present for p in printed)
    sim.set_faults(stop_signal=False)

    # The same client after its `with` block: it reopens what the block closed.
    assert run(REALTIME_LIMITED, namespace, capsys) == [present] * 10

    timer = stop_reply_after(sim, 1.0)
    printed = run(REALTIME_FAST, namespace, capsys)
    timer.join()
    assert len(printed) >= 3 and all(p == present for p in printed)
    sim.set_faults(stop_signal=False)

    namespace["client"] = namespace["LogsAPI"](api_key="wrong-key")  # type: ignore[operator]
    printed = run(ERROR_HANDLING.format(placeholder="client.get_logs_range('23/10/23')"), namespace, capsys)
    assert len(printed) == 1 and str(printed[0]).startswith(
        "Error occurred: the FaceSpace API refused the key"
    )
    printed = run(ERROR_HANDLING.format(placeholder="client.get_logs_range('31/02/23')"), namespace, capsys)
    assert len(printed) == 1 and "HH:MM:SS DD/MM/YY" in str(printed[0])

    assert run(WEBHOOK_CONFIGURATION, namespace, capsys) == []
    assert run(FILE_LOGGING, namespace, capsys) == []
    namespace["client"].get_logs_range("23/10/23", "23/10/23")  # type: ignore[attr-defined]
    logs = sorted(Path.cwd().glob("facespace_log_*.log"))
    assert any("GET /logs" in p.read_text(encoding="utf-8") for p in logs)  # DEBUG lines in the file


def test_readme_whole_day_example(readme_env: SimulatorServer, capsys: pytest.CaptureFixture[str]) -> None:
    # YOUR_API_KEY is unset: the client falls back to FACESPACE_API_KEY.
    printed = run(WHOLE_DAY, {}, capsys)
    day = truth(
        readme_env, datetime(2023, 10, 23, tzinfo=UTC), datetime(2023, 10, 23, 23, 59, 59, tzinfo=UTC)
    )
    assert printed == [{"TestCamera": day["TestCamera"]}, day]
    assert len(day) == 3 and all(day.values())
