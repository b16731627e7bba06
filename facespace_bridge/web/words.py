"""The bridge's problems in plain words, for the page.

`/status` names each problem tersely (status.py: `sink <name>: <what>` or
`source <name>: <what>`); the page says what it means for the reader and what happens next,
with the related error and since when. A problem this module does not know is shown as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SINK_NAMES = {"kafka": "Kafka", "mqtt": "MQTT", "webhook": "The webhook", "file": "The output file"}
SOURCE_NAMES = {
    "realtime": "who the cameras see now (/recognition)",
    "logs": "the sightings' history (/logs)",
}
NEXT_STEP = {
    "sink": "Nothing is lost: the bridge keeps the events and sends them when it takes them again.",
    "source": "The bridge keeps asking and catches up when the API answers.",
}


def explain(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each problem of a status document as `{"text": ..., "since": RFC 3339 or None}`: since
    when it has been so (the last error, or the last answer before the silence)."""
    return [_explain(problem, status) for problem in status.get("problems", ())]


def _explain(problem: str, status: Mapping[str, Any]) -> dict[str, Any]:
    head, _, what = problem.partition(": ")
    kind, _, name = head.partition(" ")
    if kind == "sink" and name in status.get("sinks", {}):
        sink = status["sinks"][name]
        error = sink.get("last_error")
        text = f"{SINK_NAMES.get(name, f'The {name} sink')} is not taking events."
        text += f" {NEXT_STEP['sink']}" + (f" Last error: {error}." if error else "")
        return {"text": text, "since": sink.get("last_error_at")}
    if kind == "source" and name in status.get("sources", {}):
        source = status["sources"][name]
        subject = SOURCE_NAMES.get(name, f"the {name} source")
        if what == "failing":
            error = source.get("last_error")
            text = f"The FaceSpace API does not answer for {subject}. {NEXT_STEP['source']}"
            text += f" Last error: {error}." if error else ""
            return {"text": text, "since": source.get("last_error_at")}
        text = f"The FaceSpace API has not answered for {subject} lately. {NEXT_STEP['source']}"
        return {"text": text, "since": source.get("last_poll")}
    return {"text": problem, "since": None}
