"""The front end's producer thread (pipeline.produce): decode + VAD + chunking run ahead of the
model by at most a bounded number of chunks, errors surface as the same error records as
when the generator ran on the request's thread, and a stopped request stops its front end."""

from __future__ import annotations

import io
import threading
import time

import av
import numpy as np
import pytest

from whisper_contract import ContractError, RequestOptions
from whisper_server import audio, pipeline
from whisper_server.backends import load_backend
from whisper_server.backends.base import SAMPLE_RATE
from whisper_server.settings import Settings


@pytest.fixture(scope="module")
def speech(long_file) -> np.ndarray:
    return np.concatenate([long_file.audio] * 3)  # ~4 minutes of real speech


@pytest.fixture(scope="module")
def tiny(tiny_en_dir):
    settings = Settings(model_dir=str(tiny_en_dir), device="cpu", batch_size=2, cpu_threads=2)
    backend = load_backend(settings)
    yield settings, backend
    backend.close()


def _mp2(samples: np.ndarray) -> bytes:
    """MPEG audio: frames of a fixed size, so a cut shows only at the end of the decode."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp2") as out:
        stream = out.add_stream("mp2", rate=SAMPLE_RATE * 3, layout="mono")
        up = np.repeat(np.clip(samples, -1, 1), 3)  # 48 kHz, the rate MPEG-1 layer II takes
        for at in range(0, len(up), 1152 * 64):
            frame = av.AudioFrame.from_ndarray((up[None, at:at + 1152 * 64] * 32767).astype(np.int16),
                                               format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE * 3
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _front_end_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "front-end"]


def test_front_end_stays_a_bounded_number_of_chunks_ahead(speech, monkeypatch):
    monkeypatch.setattr(pipeline, "WINDOW_SAMPLES", 20 * SAMPLE_RATE)  # many chunks, early
    blocks = lambda: iter(np.array_split(speech, 60))  # noqa: E731
    expected = list(pipeline.vad_chunks(blocks()))
    assert len(expected) >= 10
    made = 0

    def counted():
        nonlocal made
        for chunk in pipeline.vad_chunks(blocks()):
            made += 1
            yield chunk

    got, lead = [], []
    for chunk in pipeline.produce(counted(), ahead=3):
        if not got:  # a model stuck on its first batch: the front end fills the queue, then waits
            end = time.monotonic() + 20
            while made < 1 + 3 + 1 and time.monotonic() < end:
                time.sleep(0.01)
            time.sleep(0.3)
        lead.append(made - len(got))
        got.append(chunk)
    # Ahead of the consumer: the queue, plus the one chunk the front end holds.
    assert lead[0] == 1 + 3 + 1 and max(lead) <= 1 + 3 + 1
    assert [c.pieces for c in got] == [c.pieces for c in expected]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(got, expected))
    assert not _front_end_threads()


def test_front_end_error_is_the_same_error_record(speech, tiny, tmp_path, monkeypatch):
    """A file damaged after a few minutes: chunks before the damage are decoded while the
    front end reads on, then the request fails with exactly the record it failed with when
    the front end ran on the request's own thread."""
    monkeypatch.setattr(pipeline, "WINDOW_SAMPLES", 20 * SAMPLE_RATE)
    whole = _mp2(speech)
    path = tmp_path / "truncated.mp2"
    path.write_bytes(whole[: len(whole) * 2 // 3 + 7])  # off a frame boundary
    with pytest.raises(ContractError) as plain:
        list(pipeline.vad_chunks(audio.iter_blocks(path)))
    settings, backend = tiny
    decoded = []
    real = backend.transcribe_chunks

    def spy(chunks, options):
        decoded.append(len(chunks))
        return real(chunks, options)

    monkeypatch.setattr(backend, "transcribe_chunks", spy)
    with pytest.raises(ContractError) as threaded:
        pipeline.transcribe_file(path, RequestOptions(language="en"), backend, settings)
    assert threaded.value.to_record().to_json() == plain.value.to_record().to_json()
    assert plain.value.code.value == "corrupt_audio" and "truncated" in plain.value.message
    assert sum(decoded) >= 2  # speech before the damage reached the model first
    assert not _front_end_threads()


def test_a_stopped_request_stops_its_front_end(speech, monkeypatch):
    monkeypatch.setattr(pipeline, "WINDOW_SAMPLES", 20 * SAMPLE_RATE)
    closed = threading.Event()

    def source():
        try:
            yield from pipeline.vad_chunks(iter(np.array_split(speech, 60)))
        finally:
            closed.set()

    chunks = pipeline.produce(source(), ahead=2)
    next(chunks)
    chunks.close()  # what a cancel or a model error does: the consumer stops
    assert closed.wait(5) and not _front_end_threads()
