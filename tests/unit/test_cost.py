"""Prices and the transcript's cost block (issue 16): the price file, the one seconds -> dollars
rule, schema 1.1 with and without ``cost``, and job records carrying it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from whisper_contract import ModelInfo, Segment, Timings, Transcript
from whisper_contract import prices
from whisper_contract.jobs import COMPLETED, JobRecord
from whisper_contract.result import RESULT_SCHEMA_VERSION, Cost

# The instance types issue 16 names, plus the two services it compares with.
SUPPORTED = ("ml.g5.xlarge", "ml.g5.2xlarge", "ml.g6.xlarge", "ml.p5.48xlarge", "ml.c5.4xlarge")


def _transcript(cost: Cost | None) -> Transcript:
    return Transcript(text=" Hi.", language="en", language_probability=1.0, duration=12.5,
                      segments=(Segment(0, 0.0, 1.0, " Hi.", -0.2, 0.01),),
                      model=ModelInfo("tiny.en", "faster-whisper", "1.2.1"), timings=Timings(2.0), cost=cost)


def test_the_price_file_prices_every_supported_instance_and_both_comparisons() -> None:
    table = prices.load()
    assert table.region == "us-east-1" and table.currency == "USD" and table.as_of
    assert set(SUPPORTED) <= set(table.instances)
    assert table.services["transcribe-batch"].usd_per_hour == pytest.approx(0.024 * 60)
    assert table.services["openai-whisper-1"].usd_per_hour == pytest.approx(0.006 * 60)
    # Every family priced is one the CDK app can deploy (stacks/config.py's table).
    from stacks.config import INSTANCE_FAMILIES
    assert {name.split(".")[1] for name in table.instances} <= set(INSTANCE_FAMILIES)


def test_seconds_become_dollars_by_one_rule() -> None:
    table = prices.load()
    assert table.estimate("ml.g5.xlarge", 3600) == 1.408
    assert table.estimate("ml.g5.xlarge", 90) == pytest.approx(1.408 / 40)
    assert table.estimate("ml.unknown.xlarge", 90) is None and table.estimate(None, 90) is None


@pytest.mark.parametrize("bad, message", [
    ({"usd_per_hour": 0}, "positive number"), ({"usd_per_hour": "1.4"}, "positive number"), ({}, "positive"),
])
def test_a_bad_price_is_refused_with_its_name(bad: dict[str, object], message: str, tmp_path: Path) -> None:
    data = json.loads(prices.PRICES_FILE.read_text())
    data["instances"]["ml.g5.xlarge"] = bad
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"ml\.g5\.xlarge\.usd_per_hour must be a {message}"):
        prices.load(path)


def test_priced_adds_the_queue_wait_and_the_estimate_from_the_instance_share() -> None:
    measured = Cost(compute_seconds=40.0, instance_seconds=20.0, audio_seconds=600.0,
                    instance_type="ml.g5.xlarge", started_at="2026-12-03T10:00:30.500Z")
    cost = prices.priced(measured, "2026-12-03T10:00:00.000Z")
    assert cost.queue_seconds == 30.5
    assert cost.price_per_hour == 1.408 and cost.price_date == prices.load().as_of
    # Two requests shared the instance: each pays for its half, not its wall time.
    assert cost.estimated_usd == pytest.approx(20.0 * 1.408 / 3600, abs=1e-6)
    unpriced = prices.priced(dataclasses.replace(measured, instance_type=None), None)
    assert (unpriced.queue_seconds, unpriced.price_per_hour, unpriced.estimated_usd) == (None, None, None)
    # A clock a few ms behind the Lambda's never makes a negative wait.
    early = prices.priced(measured, "2026-12-03T10:00:30.510Z")
    assert early.queue_seconds == 0.0


def test_schema_1_1_carries_cost_and_reads_1_0_documents_without_it() -> None:
    assert RESULT_SCHEMA_VERSION == "1.1"
    cost = prices.priced(Cost(3.0, 3.0, 12.5, "ml.g6.xlarge", "2026-12-03T10:00:01Z"), "2026-12-03T10:00:00Z")
    data = json.loads(_transcript(cost).to_json())
    assert data["cost"] == {"compute_seconds": 3.0, "instance_seconds": 3.0, "audio_seconds": 12.5,
                            "instance_type": "ml.g6.xlarge", "started_at": "2026-12-03T10:00:01Z",
                            "queue_seconds": 1.0, "price_per_hour": 1.1267, "price_date": prices.load().as_of,
                            "estimated_usd": round(3.0 * 1.1267 / 3600, 6)}
    assert Transcript.from_json(json.dumps(data)) == _transcript(cost)
    # A 1.0 document (no cost block) and one without anyone measuring: no "cost" key, None back.
    old = json.loads(_transcript(None).to_json())
    assert "cost" not in old
    old["schema_version"] = "1.0"
    assert Transcript.from_dict(old).cost is None
    # A newer writer's extra cost fields are ignored, not fatal.
    data["cost"]["gpu_seconds"] = 2.5
    assert Transcript.from_dict(data).cost == cost


def test_job_records_carry_the_cost_and_old_records_read_without_it() -> None:
    cost = Cost(3.0, 1.5, 12.5, "ml.g5.xlarge", queue_seconds=4.0, estimated_usd=0.0006)
    job = JobRecord("id-1", "in", "a.mp3", COMPLETED, "", cost=cost)
    assert JobRecord.from_json(job.to_json()) == job
    old = json.loads(job.to_json())
    del old["cost"]
    assert JobRecord.from_json(json.dumps(old)).cost is None
