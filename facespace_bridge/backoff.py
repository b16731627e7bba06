"""How long a loop waits after a failure: the one rule for every loop of the bridge that polls
or reconnects (the realtime and logs sources, the MQTT connection).

The delays are tenacity's `wait_exponential` — the same library and rule the client's HTTP
retries and the Kafka sink use — kept across a loop's iterations instead of around one call:
`first` after the first failure, doubling, at most `longest`, and back to `first` once
something succeeded.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from tenacity import RetryCallState, wait_exponential


class Backoff:
    """Exponential backoff between the attempts of a long-running loop."""

    def __init__(self, first: float, longest: float) -> None:
        if not 0 < first <= longest:
            raise ValueError("need 0 < first <= longest")
        self.first = first
        self.longest = longest
        self.failures = 0
        self._wait = wait_exponential(multiplier=first, min=first, max=longest)

    def failed(self) -> float:
        """One more failure: how many seconds to wait before the next attempt."""
        self.failures += 1
        # tenacity's wait strategies read only the attempt number of the state they are given.
        state = cast(RetryCallState, SimpleNamespace(attempt_number=self.failures))
        return float(self._wait(state))

    def succeeded(self) -> None:
        """Start over: the next failure waits `first` again."""
        self.failures = 0
