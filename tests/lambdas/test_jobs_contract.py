"""The job record and the S3 helpers added to whisper_contract for the Lambdas and the CLI."""

from __future__ import annotations

import json

import pytest

from whisper_contract.jobs import JobRecord
from whisper_contract.keys import is_internal_key, parse_s3_uri, plain_etag


def test_job_record_round_trips_and_ignores_unknown_fields():
    job = JobRecord(inference_id="w-1", input_bucket="b", input_key="a b/ü.mp3", state="pending", options="formats=srt")
    done = job.advance("completed", result_keys=("a b/ü.mp3.srt",), completed_at="t")
    data = json.loads(done.to_json())
    data["added_by_a_newer_writer"] = 1
    again = JobRecord.from_json(json.dumps(data))
    assert again == done and again.finished and not job.finished


def test_job_record_rejects_unknown_states():
    with pytest.raises(ValueError, match="job state"):
        JobRecord(inference_id="w", input_bucket="b", input_key="k", state="done", options="")


def test_s3_helpers():
    assert parse_s3_uri("s3://bucket/dir/a+b c.wav") == ("bucket", "dir/a+b c.wav")
    for bad in ("https://bucket/k", "s3://bucket", "s3://bucket/", "s3:///k"):
        with pytest.raises(ValueError):
            parse_s3_uri(bad)
    assert plain_etag('"abc-2"') == "abc-2" and plain_etag(None) is None
    assert is_internal_key("_jobs/w.json") and is_internal_key("x.mp3.error.json")
    assert not is_internal_key("jobs/x.mp3")
