"""The trigger Lambda against moto (server mode) and a Stubber-checked sagemaker-runtime client.

The Stubber validates every InvokeEndpointAsync call against botocore's service model, so
these tests also prove the call's shape, not only that a call happened.
"""

from __future__ import annotations

import json
import logging

import boto3
import pytest
from botocore.stub import Stubber

import whisper_lambdas.submit.handler as submit
from whisper_contract import ErrorRecord
from whisper_contract.jobs import JobRecord, KeyIndex
from whisper_contract.keys import error_key, job_key, key_index_key

FLAC = b"fLaC" + b"\x00" * 64


@pytest.fixture
def runtime(aws, monkeypatch):
    client = boto3.client("sagemaker-runtime", region_name="us-east-1")
    stub = Stubber(client)
    monkeypatch.setattr(submit, "_clients", lambda: (boto3.client("s3", endpoint_url=aws.url), client))
    with stub:
        yield stub
        stub.assert_no_pending_responses()


def expect_invoke(stub, aws, key, event, custom_attributes, content_type="binary/octet-stream"):
    job = aws.job_id(event)
    stub.add_response("invoke_endpoint_async", {
        "InferenceId": job,
        "OutputLocation": f"s3://{aws.output_bucket}/_async/output/{job}.out",
        "FailureLocation": f"s3://{aws.output_bucket}/_async/failure/{job}-error.out",
    }, {
        "EndpointName": "whisper-test", "InputLocation": f"s3://{aws.input_bucket}/{key}", "InferenceId": job,
        "CustomAttributes": custom_attributes, "ContentType": content_type, "Accept": "application/json",
        "InvocationTimeoutSeconds": 900, "RequestTTLSeconds": 3600,
    })
    return job


def etag_of(aws, key):
    return aws.s3.head_object(Bucket=aws.input_bucket, Key=key)["ETag"].strip('"')


def test_submits_with_metadata_options_over_defaults_and_records_the_job(aws, runtime):
    key = "calls/2024 q1/talk #1 ü.flac"  # spaces, '#', non-ASCII: URL-encoded in the event
    event = aws.upload(key, FLAC, {"language": "de", "word-timestamps": "true"})
    assert "+" in json.loads(event["Records"][0]["body"])["Records"][0]["s3"]["object"]["key"]
    job = expect_invoke(runtime, aws, key, event,
                        "language=de&formats=json%2Ctxt&word_timestamps=true")

    assert submit.handler(event, None) == {"batchItemFailures": []}

    record = JobRecord.from_json(aws.output(job_key(job)))
    assert (record.state, record.input_bucket, record.input_key) == ("submitted", aws.input_bucket, key)
    assert record.output_location.endswith(f"{job}.out") and record.failure_location.endswith("-error.out")
    assert record.etag == etag_of(aws, key) and record.submitted_at
    assert record.options == "language=de&formats=json%2Ctxt&word_timestamps=true"


def test_duplicate_s3_event_submits_once(aws, runtime):
    event = aws.upload("a.flac", FLAC)
    expect_invoke(runtime, aws, "a.flac", event, "formats=json%2Ctxt")
    assert submit.handler(event, None) == {"batchItemFailures": []}
    before = aws.output_keys()
    # Same message again (at-least-once delivery): no second invoke (the Stubber would fail).
    assert submit.handler(event, None) == {"batchItemFailures": []}
    assert aws.output_keys() == before


def test_skips_test_events_non_audio_and_the_output_bucket_with_a_log_line(aws, runtime, caplog):
    caplog.set_level(logging.INFO)
    events = [aws.first_event, aws.upload("notes.txt", b"hello"), aws.upload("song.mp3.error.json", b"{}"),
              aws.upload("_jobs/w-1.json", b"{}")]
    own = json.loads(events[1]["Records"][0]["body"])
    own["Records"][0]["s3"]["bucket"]["name"] = aws.output_bucket
    events.append(aws.event(json.dumps(own)))
    for event in events:
        assert submit.handler(event, None) == {"batchItemFailures": []}
    assert aws.output_keys() == []
    text = caplog.text
    assert "skip: s3:TestEvent" in text
    assert "notes.txt does not have an audio file extension" in text
    assert "song.mp3.error.json does not have an audio file extension" in text
    assert f"s3://{aws.output_bucket}/notes.txt is in the output bucket" in text


def test_bad_options_write_an_error_record_without_invoking(aws, runtime):
    event = aws.upload("typo.mp3", b"ID3" + b"\x00" * 32, {"langauge": "en"})
    assert submit.handler(event, None) == {"batchItemFailures": []}
    record = ErrorRecord.from_json(aws.output(error_key("typo.mp3")))
    assert (record.code, record.status) == ("bad_option", 400)
    assert "langauge" in record.message
    assert record.details["key"] == "typo.mp3"
    job = JobRecord.from_json(aws.output(job_key(aws.job_id(event))))
    assert job.state == "failed" and job.result_keys == (error_key("typo.mp3"),)


def test_empty_object_is_an_error_record_without_invoking(aws, runtime):
    event = aws.upload("empty.wav", b"")
    assert submit.handler(event, None) == {"batchItemFailures": []}
    assert ErrorRecord.from_json(aws.output("empty.wav.error.json")).code == "empty_input"


def test_submit_failure_is_reported_for_retry_and_a_retry_succeeds(aws, runtime):
    ok_event = aws.upload("ok.flac", FLAC)
    bad_event = aws.upload("throttled.flac", FLAC + b"x")
    batch = {"Records": ok_event["Records"] + bad_event["Records"]}
    expect_invoke(runtime, aws, "ok.flac", ok_event, "formats=json%2Ctxt")
    runtime.add_client_error("invoke_endpoint_async", service_error_code="ServiceUnavailable",
                             service_message="slow down", http_status_code=503)

    result = submit.handler(batch, None)

    assert result == {"batchItemFailures": [{"itemIdentifier": bad_event["Records"][0]["messageId"]}]}
    job = aws.job_id(bad_event)
    assert JobRecord.from_json(aws.output(job_key(job))).state == "pending"
    # SQS redelivers the failed message; this time the endpoint accepts it.
    expect_invoke(runtime, aws, "throttled.flac", bad_event, "formats=json%2Ctxt")
    assert submit.handler(bad_event, None) == {"batchItemFailures": []}
    assert JobRecord.from_json(aws.output(job_key(job))).state == "submitted"


def test_malformed_message_is_reported_not_swallowed(aws, runtime):
    event = {"Records": [{"messageId": "m1", "body": "not json"}, {"messageId": "m2", "body": "{\"x\": 1}"}]}
    assert submit.handler(event, None) == {"batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}]}


def test_sns_wrapped_s3_event_is_accepted(aws, runtime):
    event = aws.upload("wrapped.flac", FLAC)
    expect_invoke(runtime, aws, "wrapped.flac", event, "formats=json%2Ctxt")
    body = event["Records"][0]["body"]
    event["Records"][0]["body"] = json.dumps({"Type": "Notification", "Message": body})
    assert submit.handler(event, None) == {"batchItemFailures": []}


def test_metadata_overrides_defaults_key_by_key():
    options = submit.options_from({"formats": "srt", "mtime": "1700000000"}, "formats=json,txt&language=en")
    assert options.formats == ("srt",) and options.language == "en"
    # An alias overrides a default too: a default is not a duplicate.
    assert submit.options_from({"format": "vtt"}, "formats=json,txt").formats == ("vtt",)


def test_aliases_given_twice_in_metadata_are_a_bad_option(aws, runtime):
    event = aws.upload("twice.flac", FLAC, {"formats": "json", "format": "srt"})
    assert submit.handler(event, None) == {"batchItemFailures": []}
    record = ErrorRecord.from_json(aws.output(error_key("twice.flac")))
    assert record.code == "bad_option" and "formats" in record.message and "twice" in record.message


def test_versioned_bucket_one_job_per_version(aws, runtime):
    """S3 events carry ``versionId`` in versioned buckets (moto's get it from moto_s3_events)."""
    aws.s3.put_bucket_versioning(Bucket=aws.input_bucket, VersioningConfiguration={"Status": "Enabled"})
    jobs = []
    for body in (FLAC, FLAC):  # the same bytes twice: two versions, two jobs
        event = aws.upload("v.flac", body)
        version = aws.s3.head_object(Bucket=aws.input_bucket, Key="v.flac")["VersionId"]
        assert json.loads(event["Records"][0]["body"])["Records"][0]["s3"]["object"]["versionId"] == version
        jobs.append(expect_invoke(runtime, aws, "v.flac", event, "formats=json%2Ctxt"))
        assert submit.handler(event, None) == {"batchItemFailures": []}
    assert jobs[0] != jobs[1]
    assert JobRecord.from_json(aws.output(job_key(jobs[1]))).version_id == version


def test_reupload_of_the_same_bytes_is_a_new_job_and_duplicates_are_not(aws, runtime):
    """Unversioned (as the deployed input bucket is): the event's sequencer tells uploads apart."""
    first = aws.upload("again.flac", FLAC)
    second = aws.upload("again.flac", FLAC)  # same bytes, same ETag
    ids = [expect_invoke(runtime, aws, "again.flac", e, "formats=json%2Ctxt") for e in (first, second)]
    assert ids[0] != ids[1]
    assert submit.handler(aws.event(first["Records"][0]["body"], second["Records"][0]["body"]), None) == \
        {"batchItemFailures": []}
    # Both again, in the other order (at-least-once, unordered delivery): no new invocation.
    assert submit.handler(aws.event(second["Records"][0]["body"], first["Records"][0]["body"]), None) == \
        {"batchItemFailures": []}
    index = KeyIndex.from_json(aws.output(key_index_key("again.flac")))
    assert index.latest_job == ids[1]


def test_an_event_older_than_the_latest_upload_is_superseded_without_invoking(aws, runtime):
    first = aws.upload("late.flac", FLAC)
    second = aws.upload("late.flac", FLAC)
    job = expect_invoke(runtime, aws, "late.flac", second, "formats=json%2Ctxt")
    assert submit.handler(second, None) == {"batchItemFailures": []}
    assert submit.handler(first, None) == {"batchItemFailures": []}  # delivered late: no invoke
    assert KeyIndex.from_json(aws.output(key_index_key("late.flac"))).latest_job == job
    assert JobRecord.from_json(aws.output(job_key(aws.job_id(first)))).state == "superseded"


def test_corrected_metadata_replaces_the_error_record(aws, runtime):
    bad = aws.upload("fix.flac", FLAC, {"language": "xx"})
    assert submit.handler(bad, None) == {"batchItemFailures": []}
    assert ErrorRecord.from_json(aws.output(error_key("fix.flac"))).code == "bad_option"
    good = aws.upload("fix.flac", FLAC, {"language": "en"})  # same bytes and ETag
    job = expect_invoke(runtime, aws, "fix.flac", good, "language=en&formats=json%2Ctxt")
    assert submit.handler(good, None) == {"batchItemFailures": []}
    assert JobRecord.from_json(aws.output(job_key(job))).state == "submitted"
    assert KeyIndex.from_json(aws.output(key_index_key("fix.flac"))).latest_job == job


def test_a_rejected_upload_removes_the_earlier_transcripts(aws, runtime):
    aws.s3.put_object(Bucket=aws.output_bucket, Key="was-good.flac.json", Body=b"{}")
    aws.s3.put_object(Bucket=aws.output_bucket, Key="was-good.flac.srt", Body=b"1")
    event = aws.upload("was-good.flac", b"")
    assert submit.handler(event, None) == {"batchItemFailures": []}
    assert [k for k in aws.output_keys() if not k.startswith("_jobs/")] == ["was-good.flac.error.json"]


@pytest.mark.parametrize("key", ["_jobs/talk.flac", "_async/output/talk.flac", "__jobs/talk.flac"])
def test_keys_under_the_internal_prefixes_are_transcribed_like_any_key(aws, runtime, key):
    bad = aws.upload(key, FLAC, {"langauge": "en"})
    assert submit.handler(bad, None) == {"batchItemFailures": []}
    assert [k for k in aws.output_keys() if k.endswith(".error.json")] == ["_" + key + ".error.json"]
    good = aws.upload(key, FLAC)
    expect_invoke(runtime, aws, key, good, "formats=json%2Ctxt")
    assert submit.handler(good, None) == {"batchItemFailures": []}


def test_input_over_the_async_payload_limit_is_an_error_record_without_invoking(aws, runtime, monkeypatch):
    monkeypatch.setattr(submit, "MAX_ASYNC_INPUT_BYTES", 50)  # instead of uploading a gigabyte
    event = aws.upload("huge.flac", FLAC)
    assert submit.handler(event, None) == {"batchItemFailures": []}
    record = ErrorRecord.from_json(aws.output("huge.flac.error.json"))
    assert (record.code, record.status) == ("input_too_large", 413) and "68 bytes" in record.message
