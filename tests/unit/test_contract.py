"""The shared contract: option parsing, the transcript schema, keys and subtitle writers."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from whisper_contract import (
    ContractError, ErrorCode, ErrorRecord, ModelInfo, RequestOptions, Segment, SourceInfo, Timings,
    Transcript, Word, error_key, inference_id, is_audio_key, output_keys, render,
)
from whisper_contract.engine_spec import EngineBuildSpec


def _transcript(words: bool = True) -> Transcript:
    w = (Word(0.0, 0.4, " Hello", 0.9), Word(0.4, 1.0, " world.", 0.8)) if words else None
    return Transcript(
        text="Hello world. Again.",
        language="en", language_probability=1.0, duration=3725.5,
        segments=(
            Segment(0, 0.0, 1.0, " Hello world.", -0.2, 0.01, w),
            Segment(1, 3661.25, 3725.5, " Again.", -0.3, 0.02, () if words else None),
        ),
        model=ModelInfo("tiny.en", "faster-whisper", "1.2.1"),
        timings=Timings(processing_seconds=1.5),
        options=RequestOptions(word_timestamps=words).to_dict(),
        source=SourceInfo("in", "a b/ü.mp3", "v1", '"etag"', "w-1"),
    )


def test_options_round_trip_through_custom_attributes() -> None:
    opts = RequestOptions(language="ja", task="translate", formats=("json", "srt", "vtt"),
                          word_timestamps=True, vad=False, beam_size=3,
                          initial_prompt="Tōkyō; a=b&c", hotwords="SageMaker")
    wire = opts.to_custom_attributes()
    assert re.fullmatch(r"[\x21-\x7e]+", wire), "custom attributes must be visible ASCII"
    assert RequestOptions.from_query(wire) == opts


def test_defaults_encode_to_empty_string() -> None:
    assert RequestOptions().to_query() == ""
    assert RequestOptions.from_query("") == RequestOptions()
    assert RequestOptions.from_query("language=auto").language is None


def test_options_named_explicit_travel_even_when_they_equal_the_defaults() -> None:
    opts = RequestOptions(formats=("json",), language=None, beam_size=3)
    assert opts.to_query() == "beam_size=3"
    wire = opts.to_query(["formats", "language"])
    assert wire == "language=&formats=json&beam_size=3"
    assert RequestOptions.from_query(wire) == opts
    with pytest.raises(ValueError, match="not option names"):
        opts.to_query(["fromats"])


@pytest.mark.parametrize("query, fragment", [
    ("language=xx", "language 'xx'"),
    ("task=summarise", "task must be one of"),
    ("formats=json,docx", "format 'docx'"),
    ("beam_size=0", "beam_size must be between"),
    ("beam_size=five", "beam_size must be an integer"),
    ("word_timestamps=maybe", "must be true or false"),
    ("langauge=en", "unknown option 'langauge'"),
    ("language=en&language=ja", "given twice"),
    ("formats=", "at least one"),
    ("a=b=c&&", "malformed"),
])
def test_bad_options_name_the_problem(query: str, fragment: str) -> None:
    with pytest.raises(ContractError) as exc:
        RequestOptions.from_query(query)
    assert exc.value.code is ErrorCode.BAD_OPTION and exc.value.status == 400
    assert fragment in exc.value.message


def test_metadata_style_keys_are_accepted() -> None:
    opts = RequestOptions.from_pairs({"Language": "zh", "word-timestamps": "yes", "format": "txt"})
    assert (opts.language, opts.word_timestamps, opts.formats) == ("zh", True, ("txt",))


def test_overlong_prompt_is_rejected_before_it_reaches_sagemaker() -> None:
    with pytest.raises(ContractError, match="longer than"):
        RequestOptions(initial_prompt="x" * 601)
    # Within the prompt limit but over SageMaker's 1024-character header once URL-encoded.
    with pytest.raises(ContractError, match="SageMaker allows 1024"):
        RequestOptions(initial_prompt="ü" * 300).to_custom_attributes()


def test_transcript_json_round_trip_keeps_words_and_source() -> None:
    t = _transcript()
    again = Transcript.from_json(t.to_json())
    assert again == t
    data = json.loads(t.to_json())
    assert data["model"] == {"model": "tiny.en", "backend": "faster-whisper", "version": "1.2.1",
                             "device": "cpu", "compute_type": "default"}
    assert data["segments"][1]["words"] == []


def test_transcript_without_words_has_no_words_key() -> None:
    data = json.loads(_transcript(words=False).to_json())
    assert all("words" not in s for s in data["segments"])


def test_readers_ignore_unknown_fields_at_every_level() -> None:
    """A newer writer (say, one that adds cost fields) must not break an older reader: the
    completion Lambda would otherwise turn every success into an ``internal`` error."""
    data = _transcript().to_dict()
    data["schema_version"] = "1.7"
    for block in [data, data["model"], data["timings"], data["source"], *data["segments"],
                  *(w for s in data["segments"] for w in s["words"])]:
        block["added_later"] = {"nested": [1, 2]}
    assert Transcript.from_dict(data) == dataclasses.replace(_transcript(), schema_version="1.7")


def test_unknown_major_schema_is_refused() -> None:
    data = _transcript().to_dict() | {"schema_version": "2.0"}
    with pytest.raises(ValueError, match="not supported"):
        Transcript.from_dict(data)


def test_segment_shift_moves_words_too() -> None:
    seg = _transcript().segments[0].shifted(30.0, new_id=7)
    assert (seg.id, seg.start, seg.end) == (7, 30.0, 31.0)
    assert [(w.start, w.end) for w in seg.words or ()] == [(30.0, 30.4), (30.4, 31.0)]


def test_srt_and_vtt_timestamps_cross_the_hour() -> None:
    t = _transcript()
    srt = render(t, "srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,000\nHello world.\n")
    # the one-word, 64 s segment is shown for max_cue_s (7 s by default, issue 17)
    assert "2\n01:01:01,250 --> 01:01:08,250\nAgain.\n" in srt
    vtt = render(t, "vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nHello world.\n")
    assert "01:01:01.250 --> 01:01:08.250" in vtt
    assert render(t, "txt") == "Hello world.\nAgain.\n"
    with pytest.raises(ValueError):
        render(t, "docx")


def test_error_record_round_trip() -> None:
    rec = ContractError(ErrorCode.CORRUPT_AUDIO, "truncated FLAC").to_record(key="a.flac")
    assert rec.status == 422
    assert ErrorRecord.from_json(rec.to_json()) == rec


def test_keys() -> None:
    assert output_keys("calls/a.mp3", ("json", "srt")) == {"json": "calls/a.mp3.json", "srt": "calls/a.mp3.srt"}
    assert error_key("calls/a.mp3") == "calls/a.mp3.error.json"
    assert is_audio_key("x/Y.FLAC") and is_audio_key("v.mp4") and not is_audio_key("notes.txt")
    assert not is_audio_key("x/a.mp3.json") and not is_audio_key("dir.mp3/")
    first = inference_id("in", "a.mp3", "v1")
    assert first == inference_id("in", "a.mp3", "v1") and len(first) <= 64
    assert first != inference_id("in", "a.mp3", "v2") != inference_id("in", "b.mp3", "v1")


def test_engine_spec_env_round_trip_and_limits() -> None:
    spec = EngineBuildSpec(model_name="large-v3-turbo", model_bucket="b", base_model_prefix="hf/x",
                           artifact_prefix="engines/x", lora_prefix="lora/y", weight_only="int8", max_batch=64)
    assert EngineBuildSpec.from_env(spec.to_env()) == spec
    with pytest.raises(ValueError, match="ENGINE_MODEL_BUCKET"):
        EngineBuildSpec.from_env({"ENGINE_MODEL_NAME": "large-v3"})
    with pytest.raises(ValueError, match="448"):
        EngineBuildSpec(model_name="large-v3", model_bucket="b", base_model_prefix="p",
                        artifact_prefix="a", max_output_len=440)
    with pytest.raises(ValueError, match="weight_only"):
        EngineBuildSpec(model_name="large-v3", model_bucket="b", base_model_prefix="p",
                        artifact_prefix="a", weight_only="fp4")
