"""Faults in the local pipeline: every uploaded object ends with exactly one transcript or one
error record, no DLQ message, and (where the fault allows) no repeated GPU work.

Real audio, the real container (tiny.en on the CPU), the real trigger and completion handlers,
moto S3/SNS/SQS, the SageMaker async stand-in; faults are injected at the boundaries described
in conftest.py. The counts of each scenario go to build/faults/summary.json.
"""

from __future__ import annotations

import json
from urllib.parse import quote_plus

from whisper_contract import ErrorRecord, Transcript
from whisper_contract.keys import error_key, key_index_key, plain_etag
from whisper_eval.clips import clip
from whisper_eval.wer import wer

SHORT = ["2830-3980-0043", "4507-16021-0012", "8455-210777-0068"]
LONG = "1272-128104-0004"  # 29 s: long enough to be killed mid-decode
MAX_WER = 0.3


def audio(part: str) -> bytes:
    return clip(part).path.read_bytes()


def upload_short(h, prefix: str) -> list[str]:
    keys = []
    for part in SHORT:
        key = f"{prefix}/{clip(part).name}"
        h.upload(key, audio(part))
        keys.append(key)
    return keys


def assert_transcripts_right(h, keys: list[str]) -> None:
    for key in keys:
        part = next(p for p in SHORT + [LONG] if key.endswith(clip(p).name))
        body = h.s3.get_object(Bucket=h.state.output_bucket, Key=f"{key}.json")["Body"].read()
        transcript = Transcript.from_json(body)
        assert wer(clip(part).reference, transcript.text) <= MAX_WER, (key, transcript.text)
        assert transcript.source.key == key


def latest_job(h, key: str) -> dict:
    index = json.loads(h.s3.get_object(Bucket=h.state.output_bucket, Key=key_index_key(key))["Body"].read())
    return h.job(index["latest_job"])


def s3_event(h, key: str) -> str:
    """Another delivery of the S3 event of the key's latest upload (same sequencer)."""
    head = h.s3.head_object(Bucket=h.state.input_bucket, Key=key)
    revision = latest_job(h, key)["revision"]
    assert revision.startswith("s:"), revision  # moto's events carry a sequencer (moto_s3_events)
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-01-01T00:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": h.state.input_bucket},
               "object": {"key": quote_plus(key), "size": head["ContentLength"], "eTag": plain_etag(head["ETag"]),
                          "sequencer": revision[2:]}},
    }]})


def test_endpoint_throttling_and_5xx(harness) -> None:
    h = harness
    before = h.runtime_counts()
    # Enough consecutive faults that botocore's own retries run out and the Lambda fails
    # (SQS redelivers), then single throttles and 5xx that a retry absorbs.
    faults = ["throttle"] * 6 + ["503", "500", "throttle"]
    h.endpoint.queue(*faults)
    keys = upload_short(h, "endpoint")
    h.settle(keys)
    summary = h.record("endpoint throttling + 5xx (InvokeEndpointAsync)", keys,
                       {"throttle": faults.count("throttle"), "5xx": 2}, before, expect_errors=0)
    assert summary["invocations_accepted"] == len(keys)
    assert not h.endpoint.actions  # every fault was served
    assert_transcripts_right(h, keys)


def test_container_overload_and_5xx(harness) -> None:
    h = harness
    before = h.runtime_counts()
    h.chaos("status:429", "status:503", "status:500")
    keys = upload_short(h, "container-5xx") + [f"container-5xx/extra-{clip(SHORT[0]).name}"]
    h.upload(keys[-1], audio(SHORT[0]))
    h.settle(keys)
    h.record("container answers 429/503/500", keys, {"status_429": 1, "status_503": 1, "status_500": 1}, before,
             expect_errors=3)
    errors = [ErrorRecord.from_json(h.s3.get_object(Bucket=h.state.output_bucket, Key=error_key(k))["Body"].read())
              for k in keys if h.outcome(k)["error"]]
    assert sorted(e.status for e in errors) == [429, 500, 503]
    assert all(e.details["failure_reason"] and e.details["source"]["key"] in keys for e in errors)


def test_s3_errors_on_read_and_write(harness) -> None:
    h = harness
    before = h.runtime_counts()
    out = h.state.output_bucket
    h.s3faults.add(
        h.rule("submit", "HeadObject", lambda p: p["Key"].startswith("s3faults/"), "InternalError"),
        h.rule("submit", "PutObject", lambda p: p["Bucket"] == out and p["Key"].startswith("_jobs/"), "SlowDown"),
        # The job update right after InvokeEndpointAsync succeeded: the retry invokes again.
        h.rule("submit", "PutObject", lambda p: p["Key"].startswith("_jobs/") and "IfMatch" in p, "InternalError"),
        h.rule("complete", "GetObject", lambda p: p["Key"].startswith("_async/output/"), "InternalError"),
        h.rule("complete", "PutObject", lambda p: p["Key"].startswith("s3faults/") and p["Key"].endswith(".srt"),
               "ServiceUnavailable"),
    )
    try:
        keys = upload_short(h, "s3faults")
        h.settle(keys)
    finally:
        h.s3faults.clear()
    injected = dict(h.s3faults.injected)
    h.s3faults.injected.clear()
    summary = h.record("S3 errors on read and write (both Lambdas)", keys, injected, before, expect_errors=0)
    assert sum(injected.values()) >= 5 * len(keys), injected
    # At-least-once submission: a lost job update repeats the (idempotent) invocation, and the
    # completion of the repeat finds the job finished and writes nothing.
    assert summary["invocations_accepted"] == 2 * len(keys)
    assert_transcripts_right(h, keys)


def test_duplicate_and_reordered_notifications(harness) -> None:
    h = harness
    before = h.runtime_counts()
    h.tapped()  # drop earlier scenarios' copies
    keys = upload_short(h, "dupes")
    h.settle(keys)
    for key in keys:  # two more copies of each S3 event (the copies need its sequencer)
        for _ in range(2):
            h.sqs.send_message(QueueUrl=h.state.ingest_queue_url, MessageBody=s3_event(h, key))
    h.settle(keys)
    modified = {k: h.s3.head_object(Bucket=h.state.output_bucket, Key=f"{k}.json")["LastModified"] for k in keys}
    notifications = h.tapped()
    assert len(notifications) >= len(keys)
    # Late copies of everything, completions in reverse order, then the S3 events again.
    for body in list(reversed(notifications)) * 2:
        h.sqs.send_message(QueueUrl=h.state.complete_queue_url, MessageBody=body)
    for key in reversed(keys):
        h.sqs.send_message(QueueUrl=h.state.ingest_queue_url, MessageBody=s3_event(h, key))
    h.settle(keys)
    summary = h.record("duplicate + reordered S3 events and completion notifications", keys,
                       {"duplicate_s3_events": 3 * len(keys), "replayed_notifications": 2 * len(notifications)},
                       before, expect_errors=0)
    assert summary["invocations_accepted"] == len(keys)  # one GPU job per object
    for key in keys:  # nothing rewritten by the late copies
        assert h.s3.head_object(Bucket=h.state.output_bucket, Key=f"{key}.json")["LastModified"] == modified[key]
    assert_transcripts_right(h, keys)


def test_container_killed_mid_request_and_restarted(harness) -> None:
    h = harness
    before = h.runtime_counts()
    restarts, dropped = h.chaos_status()["restarts"], h.chaos_status()["dropped"]
    h.chaos("kill")
    long_key = f"killed/{clip(LONG).name}"
    h.upload(long_key, audio(LONG))
    keys = [long_key] + upload_short(h, "killed")
    h.settle(keys, timeout_s=180)
    status = h.chaos_status()
    assert status["restarts"] == restarts + 1 and status["ready"]
    # Every request in flight on the killed server (the long one, and whichever short one
    # shared the instance's two slots) fails with an error record; the rest wait and succeed.
    lost_in_flight = status["dropped"] - dropped
    summary = h.record("container killed mid-request, restarted", keys, {"sigkill": 1}, before,
                       expect_errors=lost_in_flight)
    assert 1 <= lost_in_flight <= 2 and summary["invocations_accepted"] == len(keys)
    assert h.outcome(long_key)["error"]
    killed = [k for k in keys if h.outcome(k)["error"]]
    record = ErrorRecord.from_json(h.s3.get_object(Bucket=h.state.output_bucket,
                                                   Key=error_key(killed[0]))["Body"].read())
    assert "could not reach the model container" in record.message or "reach" in record.details["failure_reason"]
    assert_transcripts_right(h, [k for k in keys if k not in killed])


def test_completion_handler_crash(harness) -> None:
    h = harness
    before = h.runtime_counts()
    # Crash after the transcripts are written but before the job record says so (the worst
    # moment), and once right at the start of reading the output.
    h.s3faults.add(
        h.rule("complete", "PutObject", lambda p: p["Key"].startswith("_jobs/w-"), "crash"),
        h.rule("complete", "GetObject", lambda p: p["Key"].startswith("_async/output/"), "crash"),
    )
    try:
        keys = upload_short(h, "crash")
        h.settle(keys)
    finally:
        h.s3faults.clear()
    injected = dict(h.s3faults.injected)
    h.s3faults.injected.clear()
    summary = h.record("completion handler crash (whole batch fails, SQS redelivers)", keys, injected, before,
                       expect_errors=0)
    assert injected.get("complete:PutObject:crash", 0) == len(keys), injected
    assert summary["invocations_accepted"] == len(keys)
    for key in keys:
        job = latest_job(h, key)
        assert job["state"] == "completed" and f"{key}.json" in job["result_keys"]
    assert_transcripts_right(h, keys)
