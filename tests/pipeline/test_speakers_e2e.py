"""Speakers and channels the AWS user's way: objects dropped with options as S3 metadata, the
real trigger and completion Lambdas, the real container (tiny.en) on the local pipeline."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from whisper_contract import ErrorRecord
from whisper_eval.clips import clip
from whisper_eval.conversation import SAMPLE_RATE, build
from whisper_eval.encode import encode
from whisper_local.pipeline import LocalPipeline, PipelineConfig
from whisper_server import audio


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("spk-e2e")
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")
    config = PipelineConfig(state_path=root / "state.json", log_dir=root / "logs", visibility_timeout_s=3)
    with LocalPipeline(config) as state:
        yield state
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


def _drop_and_collect(state, key: str, body: bytes, metadata: dict[str, str], expected: set[str]) -> dict[str, str]:
    s3 = state.client("s3")
    s3.put_object(Bucket=state.input_bucket, Key=key, Body=body, Metadata=metadata)
    deadline = time.time() + 180
    keys: set[str] = set()
    while time.time() < deadline and keys != expected:
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=state.output_bucket, Prefix=key).get("Contents", [])}
        time.sleep(0.5)
    assert keys == expected
    return {k: s3.get_object(Bucket=state.output_bucket, Key=k)["Body"].read().decode() for k in keys}


def test_metadata_speakers_label_every_format(pipeline) -> None:
    lj = [audio.decode_all(clip(n).path) for n in ("LJ001-0001", "LJ001-0004")]
    conv = build({"lj": lj, "ls1272": [audio.decode_all(clip("1272-128104").path)]})
    files = _drop_and_collect(pipeline, "spk/meeting.flac", encode(conv.audio),
                              {"speakers": "auto", "formats": "json,txt,vtt"},
                              {f"spk/meeting.flac.{f}" for f in ("json", "txt", "vtt")})
    data = json.loads(files["spk/meeting.flac.json"])
    assert {s["speaker"] for s in data["segments"]} == {"S1", "S2"}
    assert all(line.startswith(("[S1] ", "[S2] ")) for line in files["spk/meeting.flac.txt"].splitlines())
    assert "<v S1>" in files["spk/meeting.flac.vtt"] and "<v S2>" in files["spk/meeting.flac.vtt"]


def test_metadata_channels_separate_labels_a_stereo_call(pipeline) -> None:
    left, right = audio.decode_all(clip("LJ001-0001").path), audio.decode_all(clip("1272-128104").path)[:14 * SAMPLE_RATE]
    pcm = np.zeros((2, 21 * SAMPLE_RATE), dtype=np.float32)
    pcm[0, :len(left)] = left
    pcm[1, 6 * SAMPLE_RATE:6 * SAMPLE_RATE + len(right)] = right
    files = _drop_and_collect(pipeline, "spk/call.flac", encode(pcm), {"channels": "separate", "formats": "json,srt"},
                              {"spk/call.flac.json", "spk/call.flac.srt"})
    segments = json.loads(files["spk/call.flac.json"])["segments"]
    assert {(s["channel"], s["speaker"]) for s in segments} == {(0, "CH0"), (1, "CH1")}
    assert "[CH0] " in files["spk/call.flac.srt"] and "[CH1] " in files["spk/call.flac.srt"]


def test_a_bad_speaker_option_is_an_error_record(pipeline) -> None:
    files = _drop_and_collect(pipeline, "spk/bad.flac", clip("2830").path.read_bytes(), {"speakers": "31"},
                              {"spk/bad.flac.error.json"})
    record = ErrorRecord.from_json(files["spk/bad.flac.error.json"])
    assert record.code == "bad_option" and "from 1 to 30" in record.message
