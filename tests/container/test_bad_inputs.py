"""Every bad input gets its exact error code and HTTP status, and the server stays healthy.

A "strict" server runs with small limits (size, length, time, concurrency) so each limit
can be hit cheaply with real audio.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from whisper_contract import ErrorRecord, Transcript

AUDIO = Path(__file__).resolve().parents[1] / "data" / "audio"
LJ = AUDIO / "en_ljspeech_LJ001-0001.flac"
SHORT = AUDIO / "en_librispeech_test-clean_2830-3980-0043.flac"
SONNET = AUDIO / "en_librivox_shakespeare-sonnet-001_stereo.mp3"  # 427 kB


def _video_only() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for _ in range(10):
            for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def _expect(response: httpx.Response, code: str, status: int) -> ErrorRecord:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    err = ErrorRecord.from_json(response.text)
    assert (err.code, err.status) == (code, status)
    assert err.message
    return err


def _healthy(server) -> None:
    assert server.ping().status_code == 200
    r = server.post(SHORT.read_bytes())
    assert r.status_code == 200 and "experience" in r.json()["text"].lower()


@pytest.mark.parametrize("case,code,status", [
    ("empty", "empty_input", 400),
    ("text", "not_audio", 415),
    ("json", "not_audio", 415),
    ("random", "not_audio", 415),
    ("png", "not_audio", 415),
    ("truncated_flac", "corrupt_audio", 422),
    ("truncated_m4a", "corrupt_audio", 422),
    ("truncated_mp3", "corrupt_audio", 422),
    ("garbled_flac", "corrupt_audio", 422),
    ("video_only", "no_audio_stream", 422),
])
def test_bad_body(tiny_server, flac, case, code, status):
    rng = np.random.default_rng(7)
    lj = LJ.read_bytes()
    bodies = {
        "empty": b"",
        "text": b"hello, this is not audio\n" * 50,
        "json": b'{"audio": "s3://bucket/key.mp3"}',
        "random": rng.bytes(40_000),
        "png": b"\x89PNG\r\n\x1a\n" + rng.bytes(2_000),
        "truncated_flac": lj[: len(lj) // 2],
        "truncated_m4a": (AUDIO / "en_ljspeech_LJ001-0004.m4a").read_bytes()[:20_000],
        "truncated_mp3": SONNET.read_bytes()[:200_000],
        "garbled_flac": lj[:2_000] + rng.bytes(len(lj) - 2_000),
        "video_only": _video_only(),
    }
    _expect(tiny_server.post(bodies[case]), code, status)
    assert tiny_server.ping().status_code == 200


def test_healthy_after_all_bad_bodies(tiny_server):
    _healthy(tiny_server)


@pytest.fixture(scope="module")
def strict_server(tiny_en_dir, tmp_path_factory, launch):
    server = launch(
        tiny_en_dir, tmp_path_factory.mktemp("strict"),
        WHISPER_MAX_INPUT_BYTES="300000", WHISPER_MAX_AUDIO_S="40", WHISPER_REQUEST_TIMEOUT_S="0.3",
        WHISPER_MAX_CONCURRENCY="1", WHISPER_MAX_QUEUE="1",
    )
    yield server
    assert server.stop() == 0, server.log()


def test_oversized_body_is_413(strict_server):
    _expect(strict_server.post(SONNET.read_bytes()), "input_too_large", 413)
    # also when the client streams without a Content-Length
    chunks = iter([SONNET.read_bytes()[i:i + 65536] for i in range(0, 427_000, 65536)])
    r = httpx.post(f"{strict_server.url}/invocations", content=chunks, timeout=30)
    _expect(r, "input_too_large", 413)
    assert strict_server.ping().status_code == 200


def test_too_long_audio_is_413(strict_server, flac):
    body = flac(np.zeros(16_000 * 60, dtype=np.float32))  # one minute of silence: tiny as FLAC
    assert len(body) < 300_000
    _expect(strict_server.post(body), "input_too_long", 413)


def test_slow_request_is_cut_with_504(strict_server):
    r = strict_server.post(LJ.read_bytes(), timeout=30)
    err = _expect(r, "timeout", 504)
    assert "0 s" in err.message or "cancel" in err.message or "longer" in err.message
    assert r.elapsed.total_seconds() < 10
    assert strict_server.ping().status_code == 200


def test_overload_is_429_and_nothing_hangs(strict_server):
    body = LJ.read_bytes()
    with ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(lambda _: strict_server.post(body, timeout=30), range(5)))
    codes = sorted(r.status_code for r in responses)
    # concurrency 1 + queue 1: two are admitted (and hit the 0.3 s limit), the rest are refused
    assert codes.count(429) >= 3 and set(codes) <= {429, 504}, codes
    for r in responses:
        _expect(r, "overloaded" if r.status_code == 429 else "timeout", r.status_code)
    assert strict_server.ping().status_code == 200


def test_not_found_routes_do_not_crash(tiny_server):
    assert httpx.get(f"{tiny_server.url}/nope").status_code == 404
    assert httpx.get(f"{tiny_server.url}/invocations").status_code == 405
    assert tiny_server.ping().status_code == 200
