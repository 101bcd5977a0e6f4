"""Redaction end to end (issue 17 part B): a synthetic spoken phone number and e-mail address
(tests/data/audio/synthetic, eSpeak NG) through the local pipeline with the real container
and the real multilingual ``base`` model, options as S3 metadata the way an AWS user sets
them. The personal data must be replaced in JSON, TXT, SRT and VTT and be absent from every
object the pipeline writes (async output and job records included); the unredacted copy
exists only with redact_output=both, and a later redacted-only upload removes it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from whisper_contract import Transcript
from whisper_contract.jobs import KeyIndex
from whisper_contract.keys import key_index_key
from whisper_local.pipeline import LocalPipeline, PipelineConfig

CLIP = Path(__file__).resolve().parent.parent / "data/audio/synthetic/en_espeak_pii_phone_email.opus"
KEY = "calls/pii.opus"
# How base writes the spoken data (5-5-5-2-3-4-5-6-7-8, John.smith at mail.com): any piece
# of it left anywhere is a leak.
LEAKS = ("555", "5-5-5", "234", "5678", "6-7-8", "smith", "mail.com", "five five")
FORMATS = ("json", "txt", "srt", "vtt")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("redact")
    config = PipelineConfig(bundled_model="base", state_path=root / "state.json", log_dir=root / "logs",
                            visibility_timeout_s=3)
    with LocalPipeline(config) as state:
        yield state


def _upload_and_wait(state, metadata: dict[str, str], after: str | None) -> KeyIndex:
    s3 = state.client("s3")
    s3.put_object(Bucket=state.input_bucket, Key=KEY, Body=CLIP.read_bytes(), Metadata=metadata)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            raw = s3.get_object(Bucket=state.output_bucket, Key=key_index_key(KEY))["Body"].read()
        except s3.exceptions.NoSuchKey:
            raw = None
        if raw:
            index = KeyIndex.from_json(raw)
            if index.published_job and index.published_job == index.latest_job and index.latest_job != after:
                return index
        time.sleep(0.5)
    raise TimeoutError(f"no result for {KEY} with {metadata}")


def _objects(state) -> dict[str, str]:
    s3 = state.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=state.output_bucket)
            for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=state.output_bucket, Key=k)["Body"].read().decode("utf-8", "replace")
            for k in keys}


def test_spoken_phone_and_email_are_redacted_everywhere_and_the_copy_follows_redact_output(pipeline):
    state = pipeline
    base = {"formats": ",".join(FORMATS), "language": "en", "redact": "pii", "word-timestamps": "true"}

    # 1. redact=pii, redacted only (the default once redaction is on)
    first = _upload_and_wait(state, base, after=None)
    objects = _objects(state)
    assert sorted(first.result_keys) == sorted(f"{KEY}.{fmt}" for fmt in FORMATS)
    for name, body in objects.items():
        for leak in LEAKS:
            assert leak not in body.lower(), (name, leak, body[:3000])
    t = Transcript.from_json(objects[f"{KEY}.json"])
    assert "[PII:PHONE]" in t.text and "[PII:EMAIL]" in t.text, t.text
    assert [s.type for s in t.redaction.spans] == ["phone", "email"]
    tags = [w for seg in t.segments for w in seg.words or () if w.word.strip().startswith("[PII:")]
    assert [w.word.strip(" .") for w in tags] == ["[PII:PHONE]", "[PII:EMAIL]"]
    for w, span in zip(tags, t.redaction.spans):
        assert (w.start, w.end) == (span.start, span.end) and 4.0 < w.start < w.end < 20.0  # times kept
    assert "Please call me back on [PII:PHONE]" in t.text and "Thank you" in t.text  # the rest is kept
    for fmt in ("txt", "srt", "vtt"):
        assert "[PII:PHONE]" in objects[f"{KEY}.{fmt}"] and "[PII:EMAIL]" in objects[f"{KEY}.{fmt}"], fmt
    assert t.captions and all(len(line) <= 42 for cue in t.captions for line in cue.lines)
    assert all(seg.confidence is not None for seg in t.segments)

    # 2. the same key again with redact_output=both: the unredacted copy too, under its own names
    second = _upload_and_wait(state, {**base, "redact-output": "both"}, after=first.latest_job)
    objects = _objects(state)
    assert sorted(second.result_keys) == sorted(
        [f"{KEY}.{fmt}" for fmt in FORMATS] + [f"{KEY}.unredacted.{fmt}" for fmt in FORMATS])
    for fmt in FORMATS:
        assert "5-5-5" in objects[f"{KEY}.unredacted.{fmt}"] and "[PII:" not in objects[f"{KEY}.unredacted.{fmt}"]
        assert "5-5-5" not in objects[f"{KEY}.{fmt}"] and "[PII:PHONE]" in objects[f"{KEY}.{fmt}"]
    assert "unredacted" not in Transcript.from_json(objects[f"{KEY}.json"]).to_dict()

    # 3. redacted only again: the stale unredacted copy is deleted
    _upload_and_wait(state, base, after=second.latest_job)
    objects = _objects(state)
    assert not [k for k in objects if ".unredacted." in k]
    assert not [k for k, body in objects.items() if "5-5-5" in body and not k.startswith("_async/")]
