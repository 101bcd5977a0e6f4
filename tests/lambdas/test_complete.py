"""The completion Lambda against moto (server mode) with the documented notification shapes."""

from __future__ import annotations

import json
import re

import boto3
import pytest

import whisper_lambdas.complete.handler as complete
from whisper_lambdas.common import OutputStore
from whisper_contract import ErrorRecord, ModelInfo, RequestOptions, Segment, Timings, Transcript, Word
from whisper_contract.jobs import JobRecord
from whisper_contract.keys import inference_id, job_key

SRT_TIME = r"(\d{2}):(\d{2}):(\d{2}),(\d{3})"
VTT_TIME = r"(\d{2}):(\d{2}):(\d{2})\.(\d{3})"


def _seconds(match: tuple[str, ...]) -> float:
    h, m, s, ms = map(int, match)
    return h * 3600 + m * 60 + s + ms / 1000


def make_transcript() -> Transcript:
    words = (Word(0.0, 0.4, " Hello", 0.9), Word(0.4, 0.9, " world.", 0.8))
    segments = (
        Segment(0, 0.0, 0.9, " Hello world.", -0.2, 0.01, words),
        Segment(1, 0.9, 3661.25, " A long second line, über eine Stunde.", -0.3, 0.02, ()),
        Segment(2, 3661.25, 3661.25, "   ", -0.3, 0.9, ()),  # blank: no subtitle cue
    )
    return Transcript(text="Hello world. A long second line, über eine Stunde.", language="en",
                      language_probability=0.98, duration=3661.25, segments=segments,
                      model=ModelInfo("tiny.en", "faster-whisper", "1.2.1"), timings=Timings(processing_seconds=1.5),
                      options={"formats": ["json", "txt", "srt", "vtt"]})


def submitted_job(aws, key: str, body: bytes = b"fLaC...", formats: str = "json,txt,srt,vtt",
                  output: bytes | None = None) -> JobRecord:
    """What the trigger leaves behind: the input object, its job record and (here) the async output."""
    aws.s3.put_object(Bucket=aws.input_bucket, Key=key, Body=body)
    aws.next_event()  # consumed: these tests start after the trigger
    etag = aws.s3.head_object(Bucket=aws.input_bucket, Key=key)["ETag"].strip('"')
    job_id = inference_id(aws.input_bucket, key, etag)
    job = JobRecord(inference_id=job_id, input_bucket=aws.input_bucket, input_key=key, state="submitted",
                    options=f"formats={formats}", etag=etag, submitted_at="2026-01-01T00:00:00.000Z",
                    output_location=f"s3://{aws.output_bucket}/_async/output/{job_id}.out",
                    failure_location=f"s3://{aws.output_bucket}/_async/failure/{job_id}-error.out")
    aws.s3.put_object(Bucket=aws.output_bucket, Key=job_key(job_id), Body=job.to_json().encode())
    if output is not None:
        aws.s3.put_object(Bucket=aws.output_bucket, Key=f"_async/output/{job_id}.out", Body=output)
    return job


def success(job: JobRecord, *, with_location: bool = True) -> str:
    message = {
        "awsRegion": "us-east-1", "eventTime": "2026-01-01T00:01:00.000Z", "receivedTime": "2026-01-01T00:00:01.000Z",
        "invocationStatus": "Completed",
        "requestParameters": {"contentType": "audio/flac", "endpointName": "whisper-test",
                              "inputLocation": f"s3://{job.input_bucket}/{job.input_key}"},
        "responseParameters": {"contentType": "application/json", **(
            {"outputLocation": job.output_location} if with_location else {})},
        "inferenceId": job.inference_id, "eventVersion": "1.0", "eventSource": "aws:sagemaker",
        "eventName": "InferenceResult",
    }
    return json.dumps(message)


def failure(job: JobRecord, reason: str = "ClientError: Received client error (422) from model.") -> str:
    return json.dumps({
        "awsRegion": "us-east-1", "eventTime": "2026-01-01T00:01:00.000Z", "invocationStatus": "Failed",
        "failureReason": reason,
        "requestParameters": {"endpointName": "whisper-test", "inputLocation": f"s3://{job.input_bucket}/{job.input_key}"},
        "inferenceId": job.inference_id, "eventVersion": "1.0", "eventSource": "aws:sagemaker",
        "eventName": "InferenceResult",
    })


def test_writes_every_format_with_source_and_timings(aws):
    key = "talks/day 1/keynote.flac"
    job = submitted_job(aws, key, output=make_transcript().to_json().encode())

    assert complete.handler(aws.event(success(job)), None) == {"batchItemFailures": []}

    heads = {fmt: aws.s3.head_object(Bucket=aws.output_bucket, Key=f"{key}.{fmt}") for fmt in ("json", "txt", "srt", "vtt")}
    assert heads["json"]["ContentType"].startswith("application/json")
    assert heads["vtt"]["ContentType"].startswith("text/vtt")
    assert heads["srt"]["ContentType"].startswith("application/x-subrip")

    data = Transcript.from_json(aws.output(f"{key}.json"))
    assert data.source.bucket == aws.input_bucket and data.source.key == key
    assert data.source.etag == job.etag and data.source.inference_id == job.inference_id
    assert data.timings.submitted_at == "2026-01-01T00:00:00.000Z"
    assert data.timings.completed_at == "2026-01-01T00:01:00.000Z"
    assert data.timings.processing_seconds == 1.5 and data.model.model == "tiny.en"
    assert data.segments[0].words[1].word == " world."

    assert aws.output(f"{key}.txt").decode() == "Hello world.\nA long second line, über eine Stunde.\n"

    # The hour-long second segment has no word timings: its words are spread over its time
    # and no cue lasts longer than max_cue_s (7 s by default; whisper_contract.captions).
    srt = aws.output(f"{key}.srt").decode().strip().split("\n\n")
    assert len(srt) == 1 + len(" A long second line, über eine Stunde.".split())  # the blank segment is no cue
    for number, block in enumerate(srt, start=1):
        index, timing, text = block.split("\n")
        assert index == str(number) and text.strip()
        start, end = re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", timing).groups()[:4], \
            re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", timing).groups()[4:]
        assert _seconds(start) <= _seconds(end) <= _seconds(start) + 7
    assert srt[1].split("\n")[1] == "00:00:00,900 --> 00:00:07,900"
    assert srt[-1].split("\n")[1] == "00:47:14,719 --> 00:47:21,719"  # "Stunde." by its share of characters
    assert " ".join(block.split("\n")[2] for block in srt[1:]) == "A long second line, über eine Stunde."

    vtt = aws.output(f"{key}.vtt").decode()
    assert vtt.startswith("WEBVTT\n\n")
    cues = vtt.strip().split("\n\n")[1:]
    assert [c.split("\n")[0] for c in cues[:2]] == ["00:00:00.000 --> 00:00:00.900", "00:00:00.900 --> 00:00:07.900"]
    assert all(re.fullmatch(f"{VTT_TIME} --> {VTT_TIME}", c.split("\n")[0]) for c in cues)

    record = JobRecord.from_json(aws.output(job_key(job.inference_id)))
    assert record.state == "completed" and len(record.result_keys) == 4


def _pii_transcript(**options: str) -> bytes:
    """What the container returns for a call-back message with redaction options (issue 17)."""
    from whisper_contract.postprocess import finish

    words = (Word(0.0, 0.5, " Call", 0.9), Word(0.5, 1.0, " 555-234-5678.", 0.9))
    seg = Segment(0, 0.0, 1.0, " Call 555-234-5678.", -0.2, 0.01, words)
    request = RequestOptions.from_pairs({"formats": "json,txt,srt,vtt", **options})
    t = Transcript(text="Call 555-234-5678.", language="en", language_probability=1.0, duration=1.0, segments=(seg,),
                   model=ModelInfo("base", "faster-whisper", "x"), timings=Timings(processing_seconds=1.0),
                   options=request.to_dict())
    return finish(t, request).to_json().encode()


def test_redact_output_both_writes_an_unredacted_copy_that_a_later_redacted_job_removes(aws):
    key = "calls/a.flac"
    job = submitted_job(aws, key, output=_pii_transcript(redact="pii", redact_output="both"))
    assert complete.handler(aws.event(success(job)), None) == {"batchItemFailures": []}
    mine = sorted(k for k in aws.output_keys() if k.startswith(key))
    assert mine == sorted([f"{key}.{f}" for f in ("json", "txt", "srt", "vtt")]
                          + [f"{key}.unredacted.{f}" for f in ("json", "txt", "srt", "vtt")])
    for fmt in ("json", "txt", "srt", "vtt"):
        assert "555-234-5678" in aws.output(f"{key}.unredacted.{fmt}").decode()
        redacted = aws.output(f"{key}.{fmt}").decode()
        assert "555" not in redacted and "[PII:PHONE]" in redacted, fmt
    assert JobRecord.from_json(aws.output(job_key(job.inference_id))).result_keys == tuple(
        [f"{key}.{f}" for f in ("json", "txt", "srt", "vtt")] + [f"{key}.unredacted.{f}" for f in ("json", "txt", "srt", "vtt")])

    again = submitted_job(aws, key, body=b"fLaC... take 2", output=_pii_transcript(redact="pii"))
    OutputStore(aws.s3, aws.output_bucket).claim(again)  # what the trigger does for the new upload
    assert complete.handler(aws.event(success(again)), None) == {"batchItemFailures": []}
    assert sorted(k for k in aws.output_keys() if k.startswith(key)) == sorted(f"{key}.{f}" for f in ("json", "txt", "srt", "vtt"))


def test_only_the_requested_formats_are_written(aws):
    job = submitted_job(aws, "a.flac", formats="srt", output=make_transcript().to_json().encode())
    complete.handler(aws.event(success(job)), None)
    assert [k for k in aws.output_keys() if k.startswith("a.flac")] == ["a.flac.srt"]


def test_duplicate_deliveries_write_once(aws):
    aws.s3.put_bucket_versioning(Bucket=aws.output_bucket, VersioningConfiguration={"Status": "Enabled"})
    job = submitted_job(aws, "dup.flac", output=make_transcript().to_json().encode())
    body = success(job)
    envelope = json.dumps({"Type": "Notification", "MessageId": "m", "Message": body})  # SNS without raw delivery

    assert complete.handler(aws.event(body), None) == {"batchItemFailures": []}
    assert complete.handler(aws.event(body, envelope), None) == {"batchItemFailures": []}

    versions = aws.s3.list_object_versions(Bucket=aws.output_bucket, Prefix="dup.flac.")["Versions"]
    assert sorted(v["Key"] for v in versions) == ["dup.flac.json", "dup.flac.srt", "dup.flac.txt", "dup.flac.vtt"]


def test_failure_writes_the_containers_error_with_the_reason(aws):
    job = submitted_job(aws, "bad.wav")
    container_error = ErrorRecord(code="corrupt_audio", message="could not decode", status=422, details={"bytes": 12})
    aws.s3.put_object(Bucket=aws.output_bucket, Key=f"_async/failure/{job.inference_id}-error.out",
                      Body=container_error.to_json().encode())

    assert complete.handler(aws.event(failure(job)), None) == {"batchItemFailures": []}

    record = ErrorRecord.from_json(aws.output("bad.wav.error.json"))
    assert (record.code, record.status, record.message) == ("corrupt_audio", 422, "could not decode")
    assert record.details["failure_reason"].startswith("ClientError: Received client error (422)")
    assert record.details["bytes"] == 12
    assert record.details["source"]["key"] == "bad.wav" and record.details["source"]["etag"] == job.etag
    assert JobRecord.from_json(aws.output(job_key(job.inference_id))).state == "failed"
    assert not [k for k in aws.output_keys() if k.startswith("bad.wav.") and not k.endswith(".error.json")]


def test_failure_without_a_failure_object_still_writes_an_error(aws):
    job = submitted_job(aws, "timeout.mp3")
    complete.handler(aws.event(failure(job, "ModelError: invocation timed out")), None)
    record = ErrorRecord.from_json(aws.output("timeout.mp3.error.json"))
    assert (record.code, record.message) == ("inference_failed", "ModelError: invocation timed out")


def test_crash_midway_is_retried_and_ends_correct(aws, monkeypatch):
    job = submitted_job(aws, "crash.flac", output=make_transcript().to_json().encode())
    real_client = boto3.client

    class Crashing:
        """The S3 client, dying after two transcript files (e.g. the Lambda timed out)."""

        def __init__(self, inner):
            self.inner, self.puts = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def put_object(self, **kwargs):
            if not kwargs["Key"].startswith("_jobs/"):
                self.puts += 1
                if self.puts > 2:
                    raise ConnectionError("simulated crash")
            return self.inner.put_object(**kwargs)

    monkeypatch.setattr(complete.boto3, "client", lambda name: Crashing(real_client(name)))
    event = aws.event(success(job))
    assert complete.handler(event, None) == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert JobRecord.from_json(aws.output(job_key(job.inference_id))).state == "submitted"
    assert len([k for k in aws.output_keys() if k.startswith("crash.flac.")]) == 2

    monkeypatch.setattr(complete.boto3, "client", real_client)
    assert complete.handler(event, None) == {"batchItemFailures": []}  # SQS redelivery
    assert sorted(k for k in aws.output_keys() if k.startswith("crash.flac.")) == [
        "crash.flac.json", "crash.flac.srt", "crash.flac.txt", "crash.flac.vtt"]
    assert Transcript.from_json(aws.output("crash.flac.json")).source.key == "crash.flac"
    assert JobRecord.from_json(aws.output(job_key(job.inference_id))).state == "completed"


def test_missing_async_output_is_retried_not_dropped(aws):
    job = submitted_job(aws, "late.flac")  # output object not there
    event = aws.event(success(job))
    assert complete.handler(event, None)["batchItemFailures"] == [{"itemIdentifier": event["Records"][0]["messageId"]}]


def test_poison_messages_are_reported(aws):
    event = {"Records": [{"messageId": "p1", "body": "{{{"}, {"messageId": "p2", "body": json.dumps({"hello": 1})}]}
    assert complete.handler(event, None) == {"batchItemFailures": [{"itemIdentifier": "p1"}, {"itemIdentifier": "p2"}]}


def test_a_replaced_input_does_not_get_a_stale_transcript(aws):
    job = submitted_job(aws, "replaced.flac", output=make_transcript().to_json().encode())
    aws.upload("replaced.flac", b"fLaC new recording")  # a newer upload of the same key
    assert complete.handler(aws.event(success(job)), None) == {"batchItemFailures": []}
    assert JobRecord.from_json(aws.output(job_key(job.inference_id))).state == "superseded"
    assert not [k for k in aws.output_keys() if k.startswith("replaced.flac.")]


def test_success_removes_an_error_record_of_an_earlier_upload(aws):
    aws.s3.put_object(Bucket=aws.output_bucket, Key="retry.flac.error.json", Body=b"{}")
    job = submitted_job(aws, "retry.flac", formats="json", output=make_transcript().to_json().encode())
    complete.handler(aws.event(success(job)), None)
    assert [k for k in aws.output_keys() if k.startswith("retry.flac")] == ["retry.flac.json"]


def test_direct_invocation_without_job_record_uses_the_input_location(aws):
    job = submitted_job(aws, "direct.flac", output=make_transcript().to_json().encode())
    aws.s3.delete_object(Bucket=aws.output_bucket, Key=job_key(job.inference_id))
    complete.handler(aws.event(success(job)), None)
    # No record, so the formats come from the transcript's own options.
    assert sorted(k for k in aws.output_keys() if k.startswith("direct.flac")) == [
        "direct.flac.json", "direct.flac.srt", "direct.flac.txt", "direct.flac.vtt"]


@pytest.mark.parametrize("body", ["not a transcript", json.dumps({"text": "x"})])
def test_a_200_that_is_not_a_transcript_becomes_an_internal_error(aws, body):
    job = submitted_job(aws, "weird.flac", output=body.encode())
    complete.handler(aws.event(success(job)), None)
    assert ErrorRecord.from_json(aws.output("weird.flac.error.json")).code == "internal"


def test_the_transcript_and_its_job_record_carry_the_priced_cost(aws):
    """Issue 16: the container's measurements plus the queue wait (submit -> decode start) and
    the estimate from prices.json for the instance it ran on."""
    import dataclasses

    from whisper_contract import prices
    from whisper_contract.result import Cost

    measured = Cost(compute_seconds=90.0, instance_seconds=45.0, audio_seconds=3661.25,
                    instance_type="ml.g5.2xlarge", started_at="2026-01-01T00:00:30.250Z")
    key = "costed/call.flac"
    job = submitted_job(aws, key, output=dataclasses.replace(make_transcript(), cost=measured).to_json().encode())
    assert complete.handler(aws.event(success(job)), None) == {"batchItemFailures": []}

    cost = Transcript.from_json(aws.output(f"{key}.json")).cost
    table = prices.load()
    assert cost == dataclasses.replace(measured, queue_seconds=30.25, price_per_hour=1.515, price_date=table.as_of,
                                       estimated_usd=round(45.0 * 1.515 / 3600, 6))
    assert JobRecord.from_json(aws.output(job_key(job.inference_id))).cost == cost


def test_a_transcript_without_measurements_gets_no_cost_block(aws):
    key = "costed/old-container.flac"
    job = submitted_job(aws, key, output=make_transcript().to_json().encode())
    assert complete.handler(aws.event(success(job)), None) == {"batchItemFailures": []}
    assert "cost" not in json.loads(aws.output(f"{key}.json"))
    assert JobRecord.from_json(aws.output(job_key(job.inference_id))).cost is None
