"""Fuzz the real server's ``POST /invocations``: every input gets a transcript or a clear error.

Inputs: random bytes, zero-length, real clips of each shipped format truncated or corrupted,
hand-built WAV headers with absurd sample rates, channel counts and sizes, valid silence and
noise at odd rates, and malformed or enormous custom attributes. The oracle: an answer within
the time limit; 200 with a transcript, or a 4xx ``ErrorRecord`` whose status matches the
HTTP status (a 5xx is a crash); the server still answers ``/ping`` afterwards. Every input
that ever broke something lives in ``corpus/server`` and is replayed first.
"""

from __future__ import annotations

import os
import re
import struct
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whisper_contract import CONTENT_TYPES, ErrorRecord, Transcript
from whisper_server.audio import decode_all
from whisper_eval.encode import encode

PROFILE = settings.get_profile(os.environ.get("FUZZ_PROFILE", "fuzz-ci"))
AUDIO = Path(__file__).resolve().parents[1] / "data" / "audio"
CLIPS = {p.suffix: p.read_bytes() for p in sorted(AUDIO.iterdir()) if p.suffix in (".flac", ".opus", ".mp3", ".m4a")
         and p.stat().st_size < 120_000}
CORPUS = Path(__file__).with_name("corpus") / "server"
CLIENT_ERRORS = {400, 413, 415, 422, 429}
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
TIMEOUT_S = 90  # the server's own limit is 60 s; past this it hangs
# Inputs whose fix must hold: (file name in corpus/server, exact error code expected).
FIXED = {
    "wav-format-tag-0-no-decoder.wav": "unsupported_media",  # was HTTP 500 (codec_context None)
    "wav-format-tag-0-stereo-16bit.wav": "unsupported_media",
    "wav-format-tag-fffe-no-extension.wav": "unsupported_media",
    # issue 12.1: playlists FFmpeg used to follow (ffconcat read files beside the body)
    "ffconcat-relative-entry.txt": "unsupported_media",
    "hls-loopback-and-file.m3u8": "unsupported_media",
    "dash-loopback.mpd": "unsupported_media",
    "sdp-loopback.sdp": "unsupported_media",
    # issue 12.6: cut to 10 % + 7 bytes, these answered 200 with part of the text
    "truncated-10pct-pcm_s16le.wav": "corrupt_audio",
    "truncated-10pct-pcm_s16le.caf": "corrupt_audio",
    "truncated-10pct-pcm_s16le.voc": "corrupt_audio",
    "truncated-10pct-ac3.ac3": "corrupt_audio",
}


# Error messages speak about the user's file: no temp paths, errno values, FFmpeg's "[...]"
# prefixes or C function names (issue 12.11).
INTERNALS = re.compile(r"/tmp|Errno|\[\d|\bavformat_|\bav_|\bavcodec_|\bswr_")
SHORT_PATH = AUDIO / "en_librispeech_test-clean_2830-3980-0043.flac"
# Containers to cut short (issue 12.6): (format, codec, sample format, rate).
CONTAINERS = [("wav", "pcm_s16le", "s16", 16_000), ("wav", "pcm_u8", "u8", 16_000), ("wav", "pcm_s24le", "s32", 16_000),
              ("wav", "pcm_f32le", "flt", 16_000), ("aiff", "pcm_s16be", "s16", 16_000), ("au", "pcm_s16be", "s16", 16_000),
              ("caf", "pcm_s16le", "s16", 16_000), ("w64", "pcm_s16le", "s16", 16_000), ("voc", "pcm_s16le", "s16", 16_000),
              ("avi", "pcm_s16le", "s16", 16_000), ("ac3", "ac3", "fltp", 48_000), ("mp2", "mp2", "s16", 48_000),
              ("wv", "wavpack", "fltp", 16_000), ("flac", "flac", "s16", 16_000)]


@lru_cache(maxsize=1)
def short_samples() -> np.ndarray:
    return decode_all(SHORT_PATH)


@lru_cache(maxsize=None)
def encoded(index: int) -> bytes:
    return encode(short_samples(), *CONTAINERS[index])


def wav(sample_rate: int, channels: int, bits: int, data: bytes, *, tag: int = 1, declared: int | None = None) -> bytes:
    """A RIFF/WAVE file with whatever header values it is given (clipped to field widths)."""
    u16 = lambda v: max(0, min(v, 0xFFFF))  # noqa: E731
    u32 = lambda v: max(0, min(v, 0xFFFFFFFF))  # noqa: E731
    block = u16(channels * max(bits, 0) // 8)
    fmt = struct.pack("<HHIIHH", u16(tag), u16(channels), u32(sample_rate), u32(sample_rate * block), block, u16(bits))
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", u32(size)) + data
    return b"RIFF" + struct.pack("<I", u32(len(body) if declared is None else declared + 36)) + body


absurd_rates = st.sampled_from([0, 1, 7, 100, 4000, 8000, 11025, 16000, 44100, 96000, 192000, 384000,
                                1_000_000, 0xFFFFFFFF])
absurd_channels = st.sampled_from([0, 1, 2, 3, 6, 8, 64, 255, 0xFFFF])
absurd_bits = st.sampled_from([0, 1, 7, 8, 12, 16, 24, 32, 64, 0xFFFF])


@st.composite
def odd_wav(draw: st.DrawFn) -> bytes:
    data = draw(st.binary(max_size=4096)) * draw(st.integers(1, 16))
    declared = draw(st.one_of(st.none(), st.integers(0, 0xFFFFFFFF)))
    return wav(draw(absurd_rates), draw(absurd_channels), draw(absurd_bits), data,
               tag=draw(st.sampled_from([1, 3, 2, 0x11, 0xFFFE, 0])), declared=declared)


@st.composite
def plausible_wav(draw: st.DrawFn) -> bytes:
    """Valid PCM: silence or noise, 0-4 s, at rates and channel counts a user might send."""
    rate = draw(st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000, 96000]))
    channels = draw(st.sampled_from([1, 2, 6]))
    frames = int(rate * draw(st.floats(0, 4)))
    if draw(st.booleans()):
        data = bytes(frames * channels * 2)
    else:
        data = draw(st.binary(min_size=256, max_size=256)) * (frames * channels * 2 // 256)
    return wav(rate, channels, 16, data)


@st.composite
def damaged_clip(draw: st.DrawFn) -> bytes:
    original = CLIPS[draw(st.sampled_from(sorted(CLIPS)))]
    kind = draw(st.sampled_from(["truncate", "corrupt", "both", "splice"]))
    data = bytearray(original)
    if kind in ("truncate", "both"):
        data = data[: draw(st.integers(0, len(data) - 1))]
    if kind in ("corrupt", "both") and data:
        for _ in range(draw(st.integers(1, 64))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
    if kind == "splice":  # a header from one format followed by the body of another
        other = CLIPS[draw(st.sampled_from(sorted(CLIPS)))]
        cut = draw(st.integers(4, 512))
        data = data[:cut] + bytearray(other[cut:])
    return bytes(data)


@st.composite
def truncated_container(draw: st.DrawFn) -> bytes:
    whole = encoded(draw(st.integers(0, len(CONTAINERS) - 1)))
    return whole[: draw(st.integers(1, len(whole) - 1))]


@st.composite
def non_finite_float(draw: st.DrawFn) -> bytes:
    """A real clip as float WAV/WavPack with NaN, Inf or huge samples injected (issue 12.5)."""
    samples = short_samples().copy()
    values = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 3.4e38, 1e-45])
    for _ in range(draw(st.integers(1, 50))):
        samples[draw(st.integers(0, len(samples) - 1))] = draw(values)
    if draw(st.booleans()):
        samples[:: draw(st.integers(100, 16_000))] = draw(values)
    fmt = draw(st.sampled_from([("wav", "pcm_f32le", "flt"), ("wv", "wavpack", "fltp")]))
    return encode(samples, *fmt)


@st.composite
def many_channels(draw: st.DrawFn) -> bytes:
    """PCM WAV, speech in one channel of a count FFmpeg may have no layout for (issue 12.10)."""
    channels = draw(st.sampled_from([3, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 32, 64]))
    speech = (np.clip(short_samples()[:16_000], -1, 1) * 32767).astype(np.int16)
    pcm = np.zeros((len(speech), channels), np.int16)
    pcm[:, draw(st.integers(0, channels - 1))] = speech
    return wav(16_000, channels, 16, pcm.tobytes())


bodies = st.one_of(
    truncated_container(),
    non_finite_float(),
    many_channels(),
    st.just(b""),
    st.binary(max_size=8192),
    odd_wav(),
    plausible_wav(),
    damaged_clip(),
    st.sampled_from(sorted(CLIPS)).map(CLIPS.__getitem__),
)

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=200)
option_keys = st.sampled_from(["language", "task", "formats", "word_timestamps", "vad", "beam_size",
                               "initial_prompt", "hotwords", "langauge", "", "x" * 50])
option_values = st.one_of(header_text, st.sampled_from(["en", "auto", "xx", "translate", "json,srt,vtt,txt",
                                                         "pdf", "true", "maybe", "0", "11", "-1", "5", "1e9"]))
attributes = st.one_of(
    st.none(),
    header_text,
    st.lists(st.tuples(option_keys, option_values), max_size=6).map(
        lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)),
    st.integers(2_000, 40_000).map(lambda n: "initial_prompt=" + "a" * n),  # an enormous header
).map(lambda text: text if text is None else text.strip())  # HTTP cannot carry edge whitespace


def check(server, body: bytes, attrs: str | None, tally) -> None:
    headers = {CUSTOM_ATTRIBUTES: attrs.encode("latin-1")} if attrs is not None else {}
    started = time.perf_counter()
    try:
        response = httpx.post(f"{server.url}/invocations", content=body, headers=headers, timeout=TIMEOUT_S)
    except httpx.TimeoutException:
        tally.fail(f"no answer within {TIMEOUT_S} s (attrs={attrs!r:.200})", body)
        raise AssertionError(f"hang on a {len(body)}-byte body")
    except httpx.HTTPError as exc:
        tally.fail(f"connection error {exc} (attrs={attrs!r:.200})", body)
        raise
    elapsed = time.perf_counter() - started
    status = response.status_code
    if status == 200 and response.headers["content-type"].startswith("application/json"):
        transcript = Transcript.from_json(response.content)
        assert isinstance(transcript.text, str) and transcript.duration >= 0
        outcome = "200 transcript"
    elif status == 200:  # exactly one non-JSON format was asked for: SRT, VTT or TXT
        mime = response.headers["content-type"].split(";")[0]
        fmt = {ctype.split(";")[0]: name for name, ctype in CONTENT_TYPES.items()}[mime]
        text = response.content.decode("utf-8")
        assert fmt != "vtt" or text.startswith("WEBVTT"), text[:200]
        assert fmt != "srt" or not text.strip() or "-->" in text, text[:200]
        outcome = f"200 transcript ({fmt})"
    elif status in CLIENT_ERRORS:
        record = ErrorRecord.from_json(response.content)
        assert record.status == status and record.message, response.text
        if INTERNALS.search(record.message):
            tally.fail(f"internals in the message: {record.message!r:.300}", body)
            raise AssertionError(f"error message shows internals: {record.message}")
        outcome = f"{status} {record.code}"
    elif status in (400, 431) and attrs is not None and len(attrs) > 8000:
        outcome = f"{status} header too large (HTTP layer)"  # h11 refuses before our code runs
    else:
        tally.fail(f"HTTP {status}: {response.text[:300]} (attrs={attrs!r:.200})", body)
        raise AssertionError(f"HTTP {status} for a {len(body)}-byte body: {response.text[:500]}")
    tally.add(outcome, elapsed)
    assert server.alive() and httpx.get(f"{server.url}/ping", timeout=5).status_code == 200, server.log()


def corpus_cases() -> list[Path]:
    return sorted(p for p in CORPUS.glob("*") if p.suffix != ".attrs") if CORPUS.exists() else []


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in corpus_cases()])
def test_regression_corpus(fuzz_server, tally, path: Path) -> None:
    attrs_file = path.with_suffix(".attrs")
    attrs = attrs_file.read_text(encoding="latin-1") if attrs_file.exists() else None
    check(fuzz_server, path.read_bytes(), attrs, tally("server-corpus"))


@pytest.mark.parametrize("name, code", sorted(FIXED.items()))
def test_fixed_inputs_get_their_exact_error(fuzz_server, name: str, code: str) -> None:
    response = httpx.post(f"{fuzz_server.url}/invocations", content=(CORPUS / name).read_bytes(), timeout=60)
    assert ErrorRecord.from_json(response.content).code == code, response.text


valid_attributes = st.one_of(st.none(), st.builds(
    lambda fmts, lang, vad, words: "&".join(p for p in (f"formats={','.join(fmts)}", lang, vad, words) if p),
    st.lists(st.sampled_from(["json", "txt", "srt", "vtt"]), min_size=1, max_size=4, unique=True),
    st.sampled_from(["", "language=en", "language=auto"]), st.sampled_from(["", "vad=false", "vad=true"]),
    st.sampled_from(["", "word_timestamps=true"])))
SHORT_CLIP = (AUDIO / "en_librispeech_test-clean_2830-3980-0043.flac").read_bytes()


@PROFILE
@given(body=bodies, attrs=valid_attributes)
def test_bodies_get_a_transcript_or_a_clear_error(fuzz_server, tally, body: bytes, attrs: str | None) -> None:
    check(fuzz_server, body, attrs, tally("server-bodies"))


@PROFILE
@given(attrs=attributes, body=st.sampled_from([SHORT_CLIP, b"", b"not audio at all"]))
def test_custom_attributes_get_a_transcript_or_a_clear_error(fuzz_server, tally, attrs: str | None,
                                                              body: bytes) -> None:
    check(fuzz_server, body, attrs, tally("server-attributes"))


REAL_PATHS = [str(p) for p in sorted(AUDIO.glob("*.flac"))[:3]] + ["/etc/passwd", "/proc/self/environ"]


@st.composite
def reference_body(draw: st.DrawFn) -> bytes:
    """Playlists and stream descriptions naming real files and loopback URLs (issue 12.1)."""
    entry = st.one_of(st.sampled_from(REAL_PATHS), st.sampled_from(REAL_PATHS).map(lambda p: "file:" + p),
                      st.sampled_from([Path(p).name for p in REAL_PATHS[:3]] + ["../" + Path(REAL_PATHS[0]).name]),
                      st.sampled_from(["http://127.0.0.1:9/a.flac", "http://169.254.169.254/latest/meta-data/",
                                       "tcp://127.0.0.1:9", "subfile,,start,0,end,0,,:" + REAL_PATHS[0],
                                       "concat:" + REAL_PATHS[0] + "|" + REAL_PATHS[1]]))
    entries = draw(st.lists(entry, min_size=1, max_size=4))
    kind = draw(st.sampled_from(["ffconcat", "hls", "dash", "sdp", "m3u"]))
    if kind == "ffconcat":
        text = "ffconcat version 1.0\n" + "".join(f"file '{e}'\n" for e in entries)
    elif kind == "hls":
        text = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n" + "".join(f"#EXTINF:10,\n{e}\n" for e in entries) + \
            "#EXT-X-ENDLIST\n"
    elif kind == "dash":
        text = ('<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
                'profiles="urn:mpeg:dash:profile:isoff-on-demand:2011"><Period><AdaptationSet>'
                + "".join(f'<Representation id="{i}" bandwidth="1"><BaseURL>{e}</BaseURL></Representation>'
                          for i, e in enumerate(entries)) + "</AdaptationSet></Period></MPD>")
    elif kind == "sdp":
        text = "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 9 RTP/AVP 0\n"
    else:
        text = "".join(f"{e}\n" for e in entries)
    return draw(st.sampled_from(["", "\ufeff", "\n"])).encode() + text.encode()


@PROFILE
@given(body=reference_body())
def test_references_are_refused_never_followed(fuzz_server, tally, body: bytes) -> None:
    response = httpx.post(f"{fuzz_server.url}/invocations", content=body, timeout=TIMEOUT_S)
    t = tally("server-references")
    if response.status_code == 200:
        t.fail("a playlist was followed: 200", body, ".txt")
        raise AssertionError(f"a playlist was followed: {response.text[:300]}")
    check(fuzz_server, body, None, t)
