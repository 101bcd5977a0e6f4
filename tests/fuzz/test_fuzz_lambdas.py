"""Fuzz the trigger and completion Lambdas against moto in server mode.

Trigger: odd S3 keys (unicode, spaces, ``+``, ``%``, ``..``, ``//``, very long), empty and
random objects, malformed metadata options, missing objects, stale ETags, test events,
SNS-wrapped and garbage messages. Completion: notifications for known and unknown jobs whose
output is a transcript, random bytes, empty or missing, failure bodies that are or are not
ErrorRecords, and garbage. The oracle: the handler returns a batch response (never raises);
a well-formed event for an audio key ends in exactly one invocation or one error record; a
malformed message is reported as a batch item failure (so SQS keeps it, then the DLQ).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote_plus

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from whisper_contract import ErrorRecord, ModelInfo, RequestOptions, Segment, Timings, Transcript, env
from whisper_contract.jobs import SUBMITTED, JobRecord
from whisper_contract.jobs import KeyIndex
from whisper_contract.keys import all_output_keys, error_key, is_audio_key, job_key, key_index_key, plain_etag

PROFILE = settings.get_profile(os.environ.get("FUZZ_PROFILE", "fuzz-ci"))
IN, OUT, ENDPOINT = "fuzz-in", "fuzz-out", "fuzz-endpoint"
FLAC = (Path(__file__).resolve().parents[1] / "data" / "audio" / "en_librispeech_test-clean_2830-3980-0043.flac")
CORPUS = Path(__file__).with_name("corpus") / "lambdas"


class RuntimeStub:
    """InvokeEndpointAsync on loopback: records each call, answers 202 like the service."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                # http.server reads header bytes as latin-1; botocore sent UTF-8.
                headers = {k.lower(): v.encode("latin-1").decode("utf-8") for k, v in self.headers.items()}
                stub.calls.append(headers)
                iid = headers.get("x-amzn-sagemaker-inference-id", "x")
                data = json.dumps({"InferenceId": iid}).encode()
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Amzn-SageMaker-OutputLocation", f"s3://{OUT}/_async/output/{iid}.out")
                self.send_header("X-Amzn-SageMaker-FailureLocation", f"s3://{OUT}/_async/failure/{iid}-error.out")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def aws(moto_url: str) -> Iterator[tuple[Any, RuntimeStub]]:
    stub = RuntimeStub()
    values = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
              "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto_url,
              "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": stub.url, env.ENDPOINT_NAME: ENDPOINT, env.OUTPUT_BUCKET: OUT,
              env.INPUT_BUCKET: IN, env.DEFAULT_OPTIONS: "formats=json,srt"}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    for bucket in (IN, OUT):
        s3.create_bucket(Bucket=bucket)
    try:
        yield s3, stub
    finally:
        stub.server.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError:
        return False


# --- trigger ----------------------------------------------------------------------------------
key_chars = st.one_of(
    st.characters(blacklist_categories=("Cc", "Cs", "Co", "Cn")),
    st.sampled_from([" ", "+", "%", "%20", "..", "../", "./", "//", "/", "#", "?", "&", "=", ";", "~", "*", "'",
                     '"', "\\", "é", "日本", "🎙", "\u200b", "\ufeff"]),
)
keys = st.tuples(st.lists(key_chars, min_size=1, max_size=40).map("".join),
                 st.sampled_from([".flac", ".WAV", ".mp3", ".m4a", ".txt", "", ".flac/", ".error.json"]))
metadata = st.dictionaries(
    st.sampled_from(["language", "formats", "format", "task", "beam-size", "vad", "langauge", "mtime", "x"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40), max_size=3)
bodies = st.sampled_from(["flac", "empty", "random"])
variants = st.sampled_from(["normal", "normal", "normal", "sns-wrapped", "missing", "stale-etag", "test-event",
                            "not-json", "no-records", "deleted-event"])


def s3_record(key: str, etag: str | None, size: int, name: str = "ObjectCreated:Put") -> dict:
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name, "awsRegion": "us-east-1",
            "s3": {"bucket": {"name": IN}, "object": {"key": quote_plus(key), "size": size, "eTag": etag}}}


@PROFILE
@given(key=keys, body=bodies, meta=metadata, variant=variants, salt=st.binary(min_size=8, max_size=64))
def test_trigger_answers_every_message(aws, tally, key: tuple[str, str], body: str, meta: dict[str, str],
                                       variant: str, salt: bytes) -> None:
    from whisper_lambdas.submit.handler import handler

    s3, stub = aws
    key = f"{uuid.uuid4().hex[:8]}/{key[0]}{key[1]}"
    if len(key.encode()) > 1024:
        key = key.encode()[:1000].decode(errors="ignore") + ".flac"
    data = {"flac": FLAC.read_bytes(), "empty": b"", "random": salt}[body]
    etag = None
    if variant != "missing":
        put = s3.put_object(Bucket=IN, Key=key, Body=data, Metadata=meta)
        etag = plain_etag(put["ETag"])
    else:
        etag = "0" * 32
    message = {"Records": [s3_record(key, "f" * 32 if variant == "stale-etag" else etag, len(data),
                                     "ObjectRemoved:Delete" if variant == "deleted-event" else "ObjectCreated:Put")]}
    text = json.dumps(message)
    if variant == "sns-wrapped":
        text = json.dumps({"Type": "Notification", "Message": text})
    elif variant == "test-event":
        text = json.dumps({"Event": "s3:TestEvent", "Bucket": IN})
    elif variant == "not-json":
        text = salt.decode("latin-1")
    elif variant == "no-records":
        text = json.dumps({"Records": "nope"})
    calls_before = len(stub.calls)

    result = handler({"Records": [{"messageId": "m1", "body": text}]}, None)

    failed = [f["itemIdentifier"] for f in result["batchItemFailures"]]
    invoked = stub.calls[calls_before:]
    error_written = exists(s3, OUT, error_key(key))
    if variant in ("not-json", "no-records"):
        assert failed == ["m1"] and not invoked
        tally("lambda-trigger").add(f"{variant}: batch item failure")
        return
    assert failed == [], result
    acts = variant in ("normal", "sns-wrapped", "missing") and is_audio_key(key)
    if not acts:
        assert not invoked and not error_written, (variant, key)
        tally("lambda-trigger").add(f"{variant}: skipped")
        return
    # Exactly one outcome: one invocation, or one error record.
    assert len(invoked) + int(error_written) == 1, (variant, key, invoked, error_written)
    latest = KeyIndex.from_json(s3.get_object(Bucket=OUT, Key=key_index_key(key))["Body"].read()).latest_job
    job = JobRecord.from_json(s3.get_object(Bucket=OUT, Key=job_key(latest))["Body"].read())
    if invoked:
        assert invoked[0]["x-amzn-sagemaker-inputlocation"] == f"s3://{IN}/{key}"
        RequestOptions.from_query(invoked[0].get("x-amzn-sagemaker-custom-attributes"))  # parses back
        assert job.state == SUBMITTED and job.input_key == key
        tally("lambda-trigger").add(f"{variant}: invoked")
    else:
        record = ErrorRecord.from_json(s3.get_object(Bucket=OUT, Key=error_key(key))["Body"].read())
        expected = {"missing": {"missing_object"}}.get(variant, {"empty_input", "bad_option"})
        assert record.code in expected and record.details["key"] == key, record
        assert job.state == "failed"
        tally("lambda-trigger").add(f"{variant}: error record {record.code}")


# --- completion -------------------------------------------------------------------------------
def transcript_json() -> bytes:
    return Transcript(text=" hello", language="en", language_probability=1.0, duration=1.0,
                      segments=(Segment(id=0, start=0.0, end=1.0, text=" hello", avg_logprob=-0.1,
                                        no_speech_prob=0.0),),
                      model=ModelInfo(model="fuzz", backend="fuzz", version="0"), timings=Timings(processing_seconds=0.1),
                      options=RequestOptions().to_dict()).to_json().encode()


outputs = st.one_of(st.sampled_from(["transcript", "missing", "empty", "error-record"]).map(lambda s: (s, b"")),
                    st.binary(max_size=512).map(lambda b: ("random", b)))
statuses = st.sampled_from(["Completed", "Failed", "Completed", "Failed", "Weird", ""])
shapes = st.sampled_from(["known-job", "known-job", "unknown-job-with-input", "unknown-job-no-input",
                          "sns-wrapped", "not-json", "missing-fields"])


@PROFILE
@given(key=keys, output=outputs, status=statuses, shape=shapes)
def test_completion_answers_every_notification(aws, tally, key: tuple[str, str], output: tuple[str, bytes],
                                               status: str, shape: str) -> None:
    from whisper_lambdas.complete.handler import handler

    s3, _ = aws
    key = f"{uuid.uuid4().hex[:8]}/{key[0]}{key[1]}"[:900]
    iid = f"w-{uuid.uuid4().hex}"
    location = f"s3://{OUT}/_async/{'output' if status == 'Completed' else 'failure'}/{iid}.out"
    kind, payload = output
    body = {"transcript": transcript_json(), "empty": b"", "random": payload,
            "error-record": json.dumps({"error": {"code": "corrupt_audio", "message": "bad", "status": 422,
                                                  "details": {}, "schema_version": "1"}}).encode()}.get(kind)
    if body is not None:
        s3.put_object(Bucket=OUT, Key=location.split("/", 3)[3], Body=body)
    if shape in ("known-job", "sns-wrapped"):
        job = JobRecord(inference_id=iid, input_bucket=IN, input_key=key, state=SUBMITTED, options="formats=json,srt")
        s3.put_object(Bucket=OUT, Key=job_key(iid), Body=job.to_json().encode())
    notification = {"inferenceId": iid, "invocationStatus": status, "eventTime": "2026-01-01T00:00:00Z",
                    "requestParameters": {} if shape == "unknown-job-no-input" else {"inputLocation": f"s3://{IN}/{key}"}}
    if status == "Completed":
        notification["responseParameters"] = {"outputLocation": location}
    else:
        notification["failureLocation"] = location
    text = json.dumps(notification)
    if shape == "sns-wrapped":
        text = json.dumps({"Type": "Notification", "Message": text})
    elif shape == "not-json":
        text = "{" + key
    elif shape == "missing-fields":
        text = json.dumps({"inferenceId": iid})

    result = handler({"Records": [{"messageId": "n1", "body": text}]}, None)

    failed = [f["itemIdentifier"] for f in result["batchItemFailures"]]
    transcript = exists(s3, OUT, f"{key}.json")
    error = exists(s3, OUT, error_key(key))
    if shape in ("not-json", "missing-fields", "unknown-job-no-input"):
        assert failed == ["n1"] and not transcript and not error
        tally("lambda-complete").add(f"{shape}: batch item failure")
        return
    if status == "Completed" and kind == "missing":
        assert failed == ["n1"] and not transcript and not error  # output not there (yet): retry
        tally("lambda-complete").add("output missing: retried")
        return
    assert failed == [], result
    assert transcript + error == 1, (shape, status, kind, transcript, error)
    if transcript:
        assert status == "Completed" and kind == "transcript"
        assert exists(s3, OUT, f"{key}.srt")
        tally("lambda-complete").add("transcript written")
    else:
        record = ErrorRecord.from_json(s3.get_object(Bucket=OUT, Key=error_key(key))["Body"].read())
        assert record.details["source"]["key"] == key
        tally("lambda-complete").add(f"error record {record.code}")


# --- re-uploads and overwrites ----------------------------------------------------------------
versions = st.lists(st.tuples(st.sampled_from([b"fLaC one", b"fLaC two", b""]),
                              st.sampled_from(["json,srt", "txt", "vtt,json,txt", "bad-format"])),
                    min_size=1, max_size=4)


@settings(PROFILE, max_examples=max(1, PROFILE.max_examples // 5))  # each example is ~20 S3 round trips
@given(uploads=versions, order=st.randoms(use_true_random=False), dup=st.integers(0, 2))
def test_reuploads_end_with_exactly_the_latest_versions_results(aws, tally, uploads, order, dup) -> None:
    """Upload several versions to one key, deliver their S3 events duplicated and shuffled,
    then the endpoint's notifications duplicated and shuffled: the key's output names hold
    exactly the latest version's results."""
    from whisper_lambdas.complete.handler import handler as complete
    from whisper_lambdas.submit.handler import handler as submit

    s3, stub = aws
    key = f"{uuid.uuid4().hex[:8]}/re-upload.flac"
    events = []
    for number, (body, formats) in enumerate(uploads):
        put = s3.put_object(Bucket=IN, Key=key, Body=body, Metadata={"formats": formats})
        record = s3_record(key, plain_etag(put["ETag"]), len(body))
        record["s3"]["object"]["sequencer"] = f"{0x10 + number:X}"  # grows per event, as S3's does
        events.append(json.dumps({"Records": [record]}))
    deliveries = events * (1 + dup)
    order.shuffle(deliveries)
    calls_before = len(stub.calls)
    for body in deliveries:
        assert submit({"Records": [{"messageId": "m", "body": body}]}, None) == {"batchItemFailures": []}
    notifications = []
    for call in stub.calls[calls_before:]:
        iid = call["x-amzn-sagemaker-inference-id"]
        job = JobRecord.from_json(s3.get_object(Bucket=OUT, Key=job_key(iid))["Body"].read())
        text = f" version {int(job.revision[2:], 16) - 0x10}"  # which upload this job read
        s3.put_object(Bucket=OUT, Key=f"_async/output/{iid}.out", Body=transcript_json().replace(b" hello", text.encode()))
        notifications.append(json.dumps({"inferenceId": iid, "invocationStatus": "Completed",
                                         "responseParameters": {"outputLocation": f"s3://{OUT}/_async/output/{iid}.out"}}))
    notifications *= 1 + dup
    order.shuffle(notifications)
    for body in notifications:
        assert complete({"Records": [{"messageId": "n", "body": body}]}, None) == {"batchItemFailures": []}

    present = sorted(k for k in all_output_keys(key) if exists(s3, OUT, k))
    body, formats = uploads[-1]
    if not body or formats == "bad-format":
        assert present == [error_key(key)], (uploads, present)
        tally("lambda-reuploads").add("latest is an error record")
    else:
        assert present == sorted(f"{key}.{f}" for f in formats.split(",")), (uploads, present)
        if f"{key}.json" in present:
            got = Transcript.from_json(s3.get_object(Bucket=OUT, Key=f"{key}.json")["Body"].read())
            assert got.text == f" version {len(uploads) - 1}", (uploads, got.text)
        tally("lambda-reuploads").add("latest transcript only")


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.json")) if CORPUS.exists() else [], ids=lambda p: p.name)
def test_regression_corpus(aws, path: Path) -> None:
    from whisper_lambdas.complete.handler import handler as complete
    from whisper_lambdas.submit.handler import handler as submit

    case = json.loads(path.read_text())
    handler = submit if case["handler"] == "submit" else complete
    result = handler({"Records": [{"messageId": "c1", "body": case["body"]}]}, None)
    assert isinstance(result["batchItemFailures"], list)
