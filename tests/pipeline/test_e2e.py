"""End to end on loopback: real audio, the real container (CPU, bundled tiny.en), the real
handlers, moto, the SageMaker stand-in; driven through the user CLI ``whisper-sm``."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from whisper_cli.main import main as whisper_sm
from whisper_contract import ErrorRecord, Transcript
from whisper_eval.clips import clip
from whisper_eval.wer import wer
from whisper_local.pipeline import LocalPipeline, PipelineConfig

CLIPS = ["2830-3980-0043", "4507-16021-0012", "LJ001-0004.m4a"]
MAX_WER = 0.25  # tiny.en on clean read English; these clips measure 0.0-0.1 here


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")  # the CLI's last-submit manifest
    config = PipelineConfig(state_path=root / "state.json", log_dir=root / "logs", visibility_timeout_s=3)
    with LocalPipeline(config) as state:
        yield state, config, root
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


def test_cli_submit_wait_get_with_real_audio_and_a_broken_file(pipeline, capsys):
    state, config, root = pipeline
    audio = root / "audio"
    audio.mkdir()
    for part in CLIPS:
        shutil.copy(clip(part).path, audio / clip(part).name)
    (audio / "broken.wav").write_bytes(b"RIFF....WAVE" + b"this is not audio " * 20)
    (audio / "README.txt").write_text("not audio: the CLI leaves it out")
    out = root / "out"
    local = ["--env", "local", "--state", str(config.state_path)]
    # The pipeline is shared by the session (tests run in random order): compare its counters
    # with where they stood before this test, not with zero.
    capsys.readouterr()
    assert whisper_sm(["status", *local, "--json"]) == 0
    before = json.loads(capsys.readouterr().out)

    code = whisper_sm(["submit", str(audio), *local, "--formats", "json,srt,vtt,txt", "--language", "en",
                       "--prefix", "e2e/", "--wait", "--out", str(out), "--timeout", "240"])

    assert code == 1  # one input failed, and the exit status says so
    for part in CLIPS:
        c = clip(part)
        key = f"e2e/audio/{c.name}"
        transcript = Transcript.from_json((out / f"{key}.json").read_text())
        assert wer(c.reference, transcript.text) <= MAX_WER, transcript.text
        assert transcript.source.key == key and transcript.source.bucket == state.input_bucket
        assert transcript.timings.submitted_at and transcript.timings.completed_at
        # The cost block: measured by the container, the queue wait added by the completion Lambda
        # (no instance type locally, so no price: issue 16).
        cost = transcript.cost
        assert cost is not None and cost.audio_seconds == pytest.approx(c.duration, abs=0.1)
        assert 0 < cost.instance_seconds <= cost.compute_seconds and cost.queue_seconds is not None
        assert 0 <= cost.queue_seconds < 240 and (cost.instance_type, cost.estimated_usd) == (None, None)
        assert transcript.language == "en"
        assert (out / f"{key}.srt").read_text().startswith("1\n00:00:")
        assert (out / f"{key}.vtt").read_text().startswith("WEBVTT\n\n00:00:")
        assert wer(c.reference, (out / f"{key}.txt").read_text()) <= MAX_WER
    error = ErrorRecord.from_json((out / "e2e/audio/broken.wav.error.json").read_text())
    assert 400 <= error.status < 500 and error.code in ("corrupt_audio", "not_audio", "unsupported_media")
    assert error.details["failure_reason"] and error.details["source"]["key"] == "e2e/audio/broken.wav"
    assert not (out / "e2e/audio/broken.wav.json").exists()
    assert not list(out.rglob("README*"))

    # `get` and `wait` on the last submit; `status` shows the stand-in's counters.
    again = root / "again"
    assert whisper_sm(["get", *local, "--out", str(again)]) == 0
    assert sorted(p.name for p in (again / "e2e/audio").iterdir()) == sorted(
        [f"{c}.{fmt}" for c in (clip(p).name for p in CLIPS) for fmt in ("json", "srt", "txt", "vtt")]
        + ["broken.wav.error.json"])
    assert whisper_sm(["wait", *local, "--timeout", "5"]) == 1
    capsys.readouterr()
    assert whisper_sm(["status", *local, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["completed"] - before["completed"] == len(CLIPS)
    assert status["failed"] - before["failed"] == 1 and status["backlog"] == 0


def test_a_dropped_object_with_metadata_options_is_transcribed(pipeline):
    """What an AWS user does: put an object with options as metadata; nothing else."""
    state, config, root = pipeline
    s3 = state.client("s3")
    c = clip("8455-210777-0068")
    s3.put_object(Bucket=state.input_bucket, Key="drop/x y.flac", Body=c.path.read_bytes(),
                  Metadata={"formats": "txt", "language": "en"})
    import time

    deadline = time.time() + 120
    while time.time() < deadline:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=state.output_bucket, Prefix="drop/").get("Contents", [])]
        if keys:
            break
        time.sleep(0.5)
    assert keys == ["drop/x y.flac.txt"]
    text = s3.get_object(Bucket=state.output_bucket, Key="drop/x y.flac.txt")["Body"].read().decode()
    assert wer(c.reference, text) <= MAX_WER
