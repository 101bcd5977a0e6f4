"""The cost block the container writes (issue 16): wall seconds per request, the request's share
of the instance when several decode at once, audio seconds and the instance type from env."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from whisper_contract import Transcript
from whisper_server.metering import Meter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_overlapping_requests_split_the_busy_time_between_them() -> None:
    clock = FakeClock()
    meter = Meter("ml.g5.xlarge", clock=clock)
    a = meter.start()          # t=0: A alone
    clock.now += 4
    b = meter.start()          # t=4: A and B
    clock.now += 6
    wall_a, share_a = meter.stop(*a)  # t=10: B alone from here
    clock.now += 10
    wall_b, share_b = meter.stop(*b)  # t=20
    assert (wall_a, wall_b) == (10, 16)
    assert share_a == pytest.approx(4 + 6 / 2) and share_b == pytest.approx(6 / 2 + 10)
    # The shares add up to the instance's busy time (20 s), not to the 26 s of wall time.
    assert share_a + share_b == pytest.approx(20)
    clock.now += 30  # idle: nobody is charged for it
    c = meter.start()
    clock.now += 2
    assert meter.stop(*c) == (2, 2)


@pytest.fixture(scope="module")
def priced_server(launch, tiny_en_dir, tmp_path_factory):
    server = launch(tiny_en_dir, tmp_path_factory.mktemp("metered"), WHISPER_MODEL_NAME="tiny.en",
                          WHISPER_MAX_CONCURRENCY="2", WHISPER_INSTANCE_TYPE="ml.g5.xlarge")
    yield server
    assert server.stop() == 0, server.log()


def test_a_transcript_carries_what_its_request_cost(priced_server, english_clips) -> None:
    clip = next(c for c in english_clips if "sonnet" in c.name)
    before = datetime.now(timezone.utc)
    began = time.monotonic()
    r = priced_server.post(clip.path.read_bytes())
    elapsed = time.monotonic() - began
    assert r.status_code == 200, r.text
    t = Transcript.from_json(r.content)
    assert t.cost is not None and t.cost.instance_type == "ml.g5.xlarge"
    assert t.cost.audio_seconds == t.duration == pytest.approx(clip.duration, abs=0.1)
    assert 0 < t.cost.compute_seconds <= elapsed and t.cost.instance_seconds == pytest.approx(t.cost.compute_seconds,
                                                                                             abs=0.01)
    assert before <= datetime.fromisoformat(t.cost.started_at or "") <= datetime.now(timezone.utc)
    # The container measures; pricing and the queue wait are the completion Lambda's.
    assert (t.cost.price_per_hour, t.cost.estimated_usd, t.cost.queue_seconds) == (None, None, None)


def test_concurrent_requests_are_not_billed_twice_for_the_same_seconds(priced_server, english_clips) -> None:
    clip = next(c for c in english_clips if "sonnet" in c.name)
    body = clip.path.read_bytes()
    began = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: priced_server.post(body), range(2)))
    elapsed = time.monotonic() - began
    costs = [Transcript.from_json(a.content).cost for a in answers if a.status_code == 200]
    assert len(costs) == 2 and all(c is not None for c in costs)
    shares = sum(c.instance_seconds for c in costs if c)
    walls = sum(c.compute_seconds for c in costs if c)
    # Both decoded at once (max_concurrency 2): the shares sum to the busy time, within the
    # client's elapsed time, and below the two wall times added up.
    assert shares <= elapsed and shares < walls * 0.9
