"""What each request cost the instance: wall seconds on a worker and its share of the instance.

With ``max_concurrency`` > 1 several requests decode at once on one instance, so summing their
wall times would bill the instance several times over. The meter splits every interval of busy
time equally among the requests running in it: the shares of all requests add up to the
instance's busy time, which is what the hourly price pays for (idle time is the scaling
policy's cost, docs/cost.md). The instance type comes from ``WHISPER_INSTANCE_TYPE`` (set by
stacks/endpoint.py); pricing happens in the completion Lambda (``whisper_contract.prices``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable

from whisper_contract.jobs import utc_now
from whisper_contract.result import Cost, Transcript


class Meter:
    def __init__(self, instance_type: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.instance_type = instance_type or None
        self._clock = clock
        self._lock = threading.Lock()
        self._shares: dict[int, float] = {}  # running request -> its share so far (s)
        self._last = 0.0
        self._next = 0

    def _advance(self, now: float) -> None:
        if self._shares:
            each = (now - self._last) / len(self._shares)
            for token in self._shares:
                self._shares[token] += each
        self._last = now

    def start(self) -> tuple[int, float]:
        with self._lock:
            now = self._clock()
            self._advance(now)
            self._next += 1
            self._shares[self._next] = 0.0
            return self._next, now

    def stop(self, token: int, started: float) -> tuple[float, float]:
        """(wall seconds, instance share in seconds) of the request ``token``."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            return now - started, self._shares.pop(token)

    def run(self, work: Callable[[], Transcript]) -> Transcript:
        """``work()``'s transcript with its ``cost`` block (measurements only, not yet priced)."""
        started_at = utc_now()
        token, started = self.start()
        try:
            transcript = work()
        finally:
            wall, share = self.stop(token, started)
        return dataclasses.replace(transcript, cost=Cost(
            compute_seconds=round(wall, 3), instance_seconds=round(share, 3), audio_seconds=transcript.duration,
            instance_type=self.instance_type, started_at=started_at))
