"""Re-uploads, overwrites and awkward keys through the whole local pipeline (moto in server
mode with AWS's event fields, the SageMaker stand-in, the real handlers; the fake container,
whose transcript says how many bytes it got, so A's transcript is told from B's).

The invariant: once the pipeline is idle, a key's output names hold exactly the files of its
latest upload, and its index names that upload's job.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from whisper_contract import ErrorRecord, Transcript
from whisper_contract.jobs import JobRecord, KeyIndex
from whisper_contract.keys import MAX_KEY_BYTES, error_key, job_key, key_index_key, output_base
from whisper_local.pipeline import LocalPipeline, LocalState, PipelineConfig

FAKE = str(Path(__file__).with_name("fake_container.py"))
AUDIO = Path(__file__).resolve().parents[1] / "data" / "audio"
A = (AUDIO / "en_librispeech_test-clean_2830-3980-0043.flac").read_bytes()
B = (AUDIO / "en_librispeech_test-clean_4507-16021-0012.flac").read_bytes()
BROKEN = b"RIFF....WAVE" + b"not audio " * 20
ALL_FORMATS = ("json", "srt", "txt", "vtt")


class Pipe:
    def __init__(self, pipeline: LocalPipeline, state: LocalState) -> None:
        self.pipeline, self.state = pipeline, state
        self.s3, self.sqs = state.client("s3"), state.client("sqs")

    def upload(self, key: str, body: bytes, **metadata: str) -> None:
        self.s3.put_object(Bucket=self.state.input_bucket, Key=key, Body=body, Metadata=metadata)

    def _depth(self, url: str) -> int:
        attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def index(self, key: str) -> KeyIndex | None:
        try:
            body = self.s3.get_object(Bucket=self.state.output_bucket, Key=key_index_key(key))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return KeyIndex.from_json(body)

    def job(self, job_id: str) -> JobRecord:
        return JobRecord.from_json(self.s3.get_object(Bucket=self.state.output_bucket, Key=job_key(job_id))["Body"].read())

    def settle(self, key: str, timeout_s: float = 60) -> dict[str, bytes]:
        """Wait until everything is idle and the key's latest job is finished; its output files."""
        assert self.pipeline.runtime is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            index = self.index(key)
            idle = (self.pipeline.runtime.status()["backlog"] == 0 and self._depth(self.state.ingest_queue_url) == 0
                    and self._depth(self.state.complete_queue_url) == 0)
            if idle and index is not None and self.job(index.latest_job).finished:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"{key!r} did not settle in {timeout_s} s")
        base = output_base(key)
        listed = self.s3.list_objects_v2(Bucket=self.state.output_bucket, Prefix=base).get("Contents", [])
        names = [o["Key"] for o in listed if o["Key"][len(base):] in {f".{f}" for f in ALL_FORMATS} | {".error.json"}]
        assert self._depth(self.state.ingest_dlq_url) == 0 and self._depth(self.state.complete_dlq_url) == 0
        return {n: self.s3.get_object(Bucket=self.state.output_bucket, Key=n)["Body"].read() for n in names}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipe]:
    root = tmp_path_factory.mktemp("reuploads")
    config = PipelineConfig(name="reup", container_cmd=[sys.executable, FAKE, "--port", "{port}"],
                            log_dir=root / "logs", state_path=root / "state.json", visibility_timeout_s=2,
                            startup_timeout_s=30)
    pipeline = LocalPipeline(config)
    with pipeline as state:
        yield Pipe(pipeline, state)


def fake_text(body: bytes) -> str:
    return f"fake transcript of {len(body)} bytes second line"


def names(files: dict[str, Any], key: str) -> list[str]:
    return sorted(n[len(output_base(key)):] for n in files)


def test_the_input_bucket_is_unversioned_like_the_deployed_one(pipe):
    # stacks/storage.py creates the input bucket without versioning: uploads are told apart
    # by the events' sequencer, so that is what the local pipeline must exercise.
    assert "Status" not in pipe.s3.get_bucket_versioning(Bucket=pipe.state.input_bucket)


def test_upload_a_then_b_then_a_again_ends_with_as_transcript(pipe):
    key = "abc/talk.flac"
    for body in (A, B, A):  # each one finished before the next
        pipe.upload(key, body)
        files = pipe.settle(key)
        assert Transcript.from_json(files[f"{key}.json"]).text == fake_text(body)
    for body in (B, A):  # and back to back, racing each other through the pipeline
        pipe.upload(key, body)
    files = pipe.settle(key)
    assert names(files, key) == [".json", ".srt", ".txt", ".vtt"]
    assert Transcript.from_json(files[f"{key}.json"]).text == fake_text(A)
    assert fake_text(A).split()[3] in files[f"{key}.txt"].decode()


def test_corrected_metadata_replaces_the_error_record(pipe):
    key = "meta/take.flac"
    pipe.upload(key, A, language="xx")
    files = pipe.settle(key)
    assert names(files, key) == [".error.json"]
    assert ErrorRecord.from_json(files[error_key(key)]).code == "bad_option"
    pipe.upload(key, A, language="en")  # the same bytes, so the same ETag
    files = pipe.settle(key)
    assert names(files, key) == [".json", ".srt", ".txt", ".vtt"]
    assert Transcript.from_json(files[f"{key}.json"]).language == "en"


def test_the_output_prefix_holds_exactly_the_latest_jobs_files(pipe):
    key = "stale/x.flac"
    pipe.upload(key, A)
    assert names(pipe.settle(key), key) == [".json", ".srt", ".txt", ".vtt"]
    pipe.upload(key, BROKEN)  # broken bytes: the container's error, and nothing else
    files = pipe.settle(key)
    assert names(files, key) == [".error.json"]
    assert ErrorRecord.from_json(files[error_key(key)]).code == "corrupt_audio"
    pipe.upload(key, A, formats="json")
    assert names(pipe.settle(key), key) == [".json"]
    pipe.upload(key, B, formats="srt,txt")
    files = pipe.settle(key)
    assert names(files, key) == [".srt", ".txt"]
    index = pipe.index(key)
    assert index is not None and index.published_job == index.latest_job
    assert sorted(index.result_keys) == sorted(files)


@pytest.mark.parametrize("key", [
    "long/" + "a" * 990 + ".flac",  # 1,000 bytes: <key>.error.json still fits
    "long/" + "b" * 1004 + ".flac",  # 1,014 bytes: <key>.error.json would be 1,025
    "long/" + "é" * 506 + ".flac",  # 1,022 bytes, two-byte characters
    "long/" + "日" * 337 + "abc.flac",  # 1,024 bytes (S3's limit), three-byte characters
])
def test_keys_near_the_s3_limit_get_a_shortened_output_name(pipe, key):
    assert 1000 <= len(key.encode()) <= MAX_KEY_BYTES
    pipe.upload(key, A)
    files = pipe.settle(key)
    base = output_base(key)
    assert (base == key) == (len(key.encode()) + len(".error.json") <= MAX_KEY_BYTES)
    assert names(files, key) == [".json", ".srt", ".txt", ".vtt"]
    assert all(len(n.encode()) <= MAX_KEY_BYTES for n in files)
    assert Transcript.from_json(files[f"{base}.json"]).source.key == key
    index = pipe.index(key)
    assert index is not None and index.output_base == base and index.input_key == key
    assert pipe.job(index.latest_job).output_base == base
    pipe.upload(key, BROKEN)  # the error record is the longest name: it fits too
    files = pipe.settle(key)
    assert names(files, key) == [".error.json"]
    assert ErrorRecord.from_json(files[f"{base}.error.json"]).details["source"]["key"] == key


@pytest.mark.parametrize("key", ["_jobs/meeting.flac", "_async/output/meeting.flac"])
def test_inputs_under_the_internal_prefixes_are_transcribed(pipe, key):
    pipe.upload(key, A)
    files = pipe.settle(key)
    assert sorted(files) == [f"_{key}.{fmt}" for fmt in ALL_FORMATS]
    assert json.loads(files[f"_{key}.json"])["source"]["key"] == key
