"""Speakers and channels in the contract (issue 17 part A): options, labels in the schema,
labels in every rendered format."""

from __future__ import annotations

import json

import pytest

from whisper_contract import ContractError, ErrorCode, ModelInfo, RequestOptions, Segment, Timings, Transcript, Word, render


def test_speaker_options_round_trip_through_custom_attributes() -> None:
    for opts in (RequestOptions(speakers="auto", min_speakers=2, max_speakers=4),
                 RequestOptions(speakers=3), RequestOptions(channels="separate")):
        assert RequestOptions.from_query(opts.to_custom_attributes()) == opts


def test_speaker_options_from_s3_metadata_spelling() -> None:
    opts = RequestOptions.from_pairs({"Speakers": "AUTO", "max-speakers": "5", "channels": "mix"})
    assert (opts.speakers, opts.max_speakers, opts.speaker_range) == ("auto", 5, (1, 5))
    assert RequestOptions.from_pairs({"speakers": "2"}).speaker_range == (2, 2)
    assert RequestOptions.from_pairs({"speakers": "none"}).speakers is None
    assert RequestOptions.from_pairs({"speakers": ""}).speakers is None


@pytest.mark.parametrize("query, fragment", [
    ("channels=left", "channels must be one of"),
    ("speakers=many", "speakers must be an integer"),
    ("speakers=0", "speakers must be none, auto or a number from 1 to 30"),
    ("speakers=31", "from 1 to 30"),
    ("speakers=auto&max_speakers=31", "max_speakers must be between 1 and 30"),
    ("speakers=auto&min_speakers=0", "min_speakers must be between"),
    ("speakers=auto&min_speakers=4&max_speakers=2", "greater than max_speakers"),
    ("max_speakers=3", "applies to speakers=auto only"),
    ("speakers=2&min_speakers=1", "applies to speakers=auto only"),
    ("speakers=auto&channels=separate", "exclude each other"),
    ("speakers=2&vad=false", "needs vad=true"),
    ("min_speakers=two&speakers=auto", "min_speakers must be an integer"),
])
def test_bad_speaker_options_are_bad_option(query: str, fragment: str) -> None:
    with pytest.raises(ContractError) as exc:
        RequestOptions.from_query(query)
    assert exc.value.code is ErrorCode.BAD_OPTION
    assert fragment in exc.value.message


def _labelled() -> Transcript:
    return Transcript(
        text="Hello. Hi there.", language="en", language_probability=1.0, duration=4.0,
        segments=(
            Segment(0, 0.0, 1.0, " Hello.", -0.2, 0.01, (Word(0.0, 1.0, " Hello.", 0.9, "S1"),), speaker="S1"),
            Segment(1, 1.5, 3.0, " Hi <there>.", -0.3, 0.02,
                    (Word(1.5, 2.0, " Hi", 0.9, "S2"), Word(2.0, 3.0, " <there>.", 0.8, "S2")), speaker="S2"),
        ),
        model=ModelInfo("tiny.en", "faster-whisper", "1.2.1"), timings=Timings(processing_seconds=1.0),
    )


def test_labels_round_trip_and_are_absent_when_unset() -> None:
    t = _labelled()
    assert Transcript.from_json(t.to_json()) == t
    data = json.loads(t.to_json())
    assert data["schema_version"] == "1.1"
    assert data["segments"][1]["speaker"] == "S2" and data["segments"][1]["words"][0]["speaker"] == "S2"
    assert "channel" not in data["segments"][0] and "channel" not in data["segments"][0]["words"][0]
    plain = Transcript.from_dict({**data, "segments": [
        {k: v for k, v in s.items() if k != "speaker"} | {"words": [{k: v for k, v in w.items() if k != "speaker"}
                                                                      for w in s["words"]]}
        for s in data["segments"]]})
    assert "speaker" not in plain.to_json()


def test_a_1_0_document_reads_without_labels() -> None:
    data = _labelled().to_dict()
    data["schema_version"] = "1.0"
    for seg in data["segments"]:
        seg.pop("speaker")
        for w in seg["words"]:
            w.pop("speaker")
    t = Transcript.from_dict(data)
    assert all(s.speaker is None and s.channel is None for s in t.segments)


def test_channel_labels_round_trip() -> None:
    t = _labelled()
    seg = Segment(0, 0.0, 1.0, " Yes.", -0.1, 0.0, (Word(0.0, 1.0, " Yes.", 0.9, "CH1", 1),), speaker="CH1", channel=1)
    t = Transcript(**{**t.__dict__, "segments": (seg,)})
    data = json.loads(t.to_json())
    assert data["segments"][0]["channel"] == 1 and data["segments"][0]["words"][0]["channel"] == 1
    assert Transcript.from_dict(data) == t


def test_every_text_format_names_the_speaker() -> None:
    t = _labelled()
    assert render(t, "txt") == "[S1] Hello.\n[S2] Hi <there>.\n"
    srt = render(t, "srt")
    assert "\n[S1] Hello.\n" in srt and "\n[S2] Hi &lt;there&gt;.\n" in srt
    vtt = render(t, "vtt")
    # WebVTT's voice span; the speech's own "<" stays escaped so it cannot open a tag.
    assert "\n<v S1>Hello.\n" in vtt and "\n<v S2>Hi &lt;there&gt;.\n" in vtt


def test_cli_flags_travel_as_options() -> None:
    from whisper_cli import main

    args = main.build_parser().parse_args(["submit", "a.wav", "--speakers", "auto", "--max-speakers", "4"])
    opts, explicit = main._options(args)
    assert (opts.speakers, opts.max_speakers) == ("auto", 4)
    assert {"speakers", "max_speakers"} <= explicit
    args = main.build_parser().parse_args(["submit", "a.wav", "--channels", "separate"])
    assert main._options(args)[0].channels == "separate"
    with pytest.raises(ContractError, match="from 1 to 30"):
        main._options(main.build_parser().parse_args(["submit", "a.wav", "--speakers", "40"]))


def test_s3_metadata_over_deployment_defaults_reach_the_container_intact() -> None:
    """The trigger's path: the object's metadata over DEFAULT_OPTIONS, into the custom
    attributes header, parsed again by the container."""
    opts = RequestOptions.with_defaults("formats=json,srt&speakers=auto", {"max-speakers": "3"})
    again = RequestOptions.from_query(opts.to_custom_attributes())
    assert (again.speakers, again.max_speakers, again.formats) == ("auto", 3, ("json", "srt"))
    with pytest.raises(ContractError, match="applies to speakers=auto only"):
        RequestOptions.with_defaults("formats=json", {"max-speakers": "3"})
