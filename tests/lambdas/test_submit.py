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
from whisper_contract.jobs import JobRecord
from whisper_contract.keys import error_key, inference_id, job_key

FLAC = b"fLaC" + b"\x00" * 64


@pytest.fixture
def runtime(aws, monkeypatch):
    client = boto3.client("sagemaker-runtime", region_name="us-east-1")
    stub = Stubber(client)
    monkeypatch.setattr(submit, "_clients", lambda: (boto3.client("s3", endpoint_url=aws.url), client))
    with stub:
        yield stub
        stub.assert_no_pending_responses()


def expect_invoke(stub, aws, key, etag, custom_attributes, content_type="binary/octet-stream"):
    job = inference_id(aws.input_bucket, key, etag)
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
    job = expect_invoke(runtime, aws, key, etag_of(aws, key),
                        "language=de&formats=json%2Ctxt&word_timestamps=true")

    assert submit.handler(event, None) == {"batchItemFailures": []}

    record = JobRecord.from_json(aws.output(job_key(job)))
    assert (record.state, record.input_bucket, record.input_key) == ("submitted", aws.input_bucket, key)
    assert record.output_location.endswith(f"{job}.out") and record.failure_location.endswith("-error.out")
    assert record.etag == etag_of(aws, key) and record.submitted_at
    assert record.options == "language=de&formats=json%2Ctxt&word_timestamps=true"


def test_duplicate_s3_event_submits_once(aws, runtime):
    event = aws.upload("a.flac", FLAC)
    expect_invoke(runtime, aws, "a.flac", etag_of(aws, "a.flac"), "formats=json%2Ctxt")
    assert submit.handler(event, None) == {"batchItemFailures": []}
    before = aws.output_keys()
    # Same message again (at-least-once delivery): no second invoke (the Stubber would fail).
    assert submit.handler(event, None) == {"batchItemFailures": []}
    assert aws.output_keys() == before


def test_skips_test_events_non_audio_and_own_output_with_a_log_line(aws, runtime, caplog):
    caplog.set_level(logging.INFO)
    events = [aws.first_event, aws.upload("notes.txt", b"hello"), aws.upload("song.mp3.error.json", b"{}"),
              aws.upload("_jobs/w-1.json", b"{}")]
    for event in events:
        assert submit.handler(event, None) == {"batchItemFailures": []}
    assert aws.output_keys() == []
    text = caplog.text
    assert "skip: s3:TestEvent" in text
    assert "notes.txt does not have an audio file extension" in text
    assert "song.mp3.error.json is the pipeline's own output" in text
    assert "_jobs/w-1.json is the pipeline's own output" in text


def test_bad_options_write_an_error_record_without_invoking(aws, runtime):
    event = aws.upload("typo.mp3", b"ID3" + b"\x00" * 32, {"langauge": "en"})
    assert submit.handler(event, None) == {"batchItemFailures": []}
    record = ErrorRecord.from_json(aws.output(error_key("typo.mp3")))
    assert (record.code, record.status) == ("bad_option", 400)
    assert "langauge" in record.message
    assert record.details["key"] == "typo.mp3"
    job = JobRecord.from_json(aws.output(job_key(inference_id(aws.input_bucket, "typo.mp3", etag_of(aws, "typo.mp3")))))
    assert job.state == "failed"


def test_empty_object_is_an_error_record_without_invoking(aws, runtime):
    event = aws.upload("empty.wav", b"")
    assert submit.handler(event, None) == {"batchItemFailures": []}
    assert ErrorRecord.from_json(aws.output("empty.wav.error.json")).code == "empty_input"


def test_submit_failure_is_reported_for_retry_and_a_retry_succeeds(aws, runtime):
    ok_event = aws.upload("ok.flac", FLAC)
    bad_event = aws.upload("throttled.flac", FLAC + b"x")
    batch = {"Records": ok_event["Records"] + bad_event["Records"]}
    expect_invoke(runtime, aws, "ok.flac", etag_of(aws, "ok.flac"), "formats=json%2Ctxt")
    runtime.add_client_error("invoke_endpoint_async", service_error_code="ServiceUnavailable",
                             service_message="slow down", http_status_code=503)

    result = submit.handler(batch, None)

    assert result == {"batchItemFailures": [{"itemIdentifier": bad_event["Records"][0]["messageId"]}]}
    job = inference_id(aws.input_bucket, "throttled.flac", etag_of(aws, "throttled.flac"))
    assert JobRecord.from_json(aws.output(job_key(job))).state == "pending"
    # SQS redelivers the failed message; this time the endpoint accepts it.
    expect_invoke(runtime, aws, "throttled.flac", etag_of(aws, "throttled.flac"), "formats=json%2Ctxt")
    assert submit.handler(bad_event, None) == {"batchItemFailures": []}
    assert JobRecord.from_json(aws.output(job_key(job))).state == "submitted"


def test_malformed_message_is_reported_not_swallowed(aws, runtime):
    event = {"Records": [{"messageId": "m1", "body": "not json"}, {"messageId": "m2", "body": "{\"x\": 1}"}]}
    assert submit.handler(event, None) == {"batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}]}


def test_sns_wrapped_s3_event_is_accepted(aws, runtime):
    event = aws.upload("wrapped.flac", FLAC)
    body = event["Records"][0]["body"]
    event["Records"][0]["body"] = json.dumps({"Type": "Notification", "Message": body})
    expect_invoke(runtime, aws, "wrapped.flac", etag_of(aws, "wrapped.flac"), "formats=json%2Ctxt")
    assert submit.handler(event, None) == {"batchItemFailures": []}


def test_metadata_overrides_defaults_key_by_key():
    options = submit.options_from({"formats": "srt", "mtime": "1700000000"}, "formats=json,txt&language=en")
    assert options.formats == ("srt",) and options.language == "en"


def test_versioned_bucket_one_job_per_version(aws, runtime):
    """Real S3 events carry ``versionId`` in versioned buckets (moto's do not: added here)."""
    aws.s3.put_bucket_versioning(Bucket=aws.input_bucket, VersioningConfiguration={"Status": "Enabled"})
    jobs = []
    for body in (FLAC, FLAC + b"v2"):
        event = aws.upload("v.flac", body)
        version = aws.s3.head_object(Bucket=aws.input_bucket, Key="v.flac")["VersionId"]
        message = json.loads(event["Records"][0]["body"])
        message["Records"][0]["s3"]["object"]["versionId"] = version
        event["Records"][0]["body"] = json.dumps(message)
        jobs.append(expect_invoke(runtime, aws, "v.flac", version, "formats=json%2Ctxt"))
        assert submit.handler(event, None) == {"batchItemFailures": []}
    assert jobs[0] != jobs[1]
    assert JobRecord.from_json(aws.output(job_key(jobs[1]))).version_id is not None


def test_input_over_the_async_payload_limit_is_an_error_record_without_invoking(aws, runtime, monkeypatch):
    monkeypatch.setattr(submit, "MAX_ASYNC_INPUT_BYTES", 50)  # instead of uploading a gigabyte
    event = aws.upload("huge.flac", FLAC)
    assert submit.handler(event, None) == {"batchItemFailures": []}
    record = ErrorRecord.from_json(aws.output("huge.flac.error.json"))
    assert (record.code, record.status) == ("input_too_large", 413) and "68 bytes" in record.message
