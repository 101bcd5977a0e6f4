"""Cross-request batching (whisper_server.batcher): with real models, chunks of concurrent
requests share batches and get the transcripts they get alone; a failing mixed batch fails
only the request that caused it; the batch size follows the backend unless set."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from whisper_contract import Transcript
from whisper_server.backends import load_backend
from whisper_server.batcher import DEFAULT_BATCH, Batcher, batch_size
from whisper_server.decoding import DecodeOptions
from whisper_server.settings import Settings

EN = DecodeOptions(language="en", beam_size=1)


@pytest.fixture(scope="module")
def tiny(tiny_en_dir):
    settings = Settings(model_dir=str(tiny_en_dir), device="cpu", cpu_threads=2)
    backend = load_backend(settings)
    yield settings, backend
    backend.close()


@pytest.fixture(scope="module")
def requests_audio(english_clips) -> list[list[np.ndarray]]:
    """Four requests of one or two real clips each (<= 30 s chunks)."""
    from whisper_server.audio import decode_all

    pcm = [decode_all(c.path)[: 30 * 16000] for c in english_clips]
    return [pcm[0:2], pcm[2:3], pcm[3:5], pcm[5:6]]


def _texts(results: list[list]) -> list[str]:
    return ["".join(s.text for s in segs) for segs in results]


def _held(batcher: Batcher, n: int, work) -> list:
    """Run ``work(i)`` on n threads while the model thread is held busy, so all n jobs are
    queued when it is released: they must come out of one batch."""
    release, holding = threading.Event(), threading.Event()
    blocker = threading.Thread(target=batcher.call, args=(lambda: holding.set() or release.wait(),))
    blocker.start()
    assert holding.wait(20)
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(work, i) for i in range(n)]
        end = time.monotonic() + 20
        while len(batcher._jobs) < n and time.monotonic() < end:
            time.sleep(0.01)
        assert len(batcher._jobs) == n
        release.set()
        blocker.join()
        return [f.result() for f in futures]


def test_concurrent_requests_share_a_batch_and_get_their_own_transcripts(tiny, requests_audio):
    _, backend = tiny
    alone = [_texts(backend.transcribe_chunks(chunks, EN)) for chunks in requests_audio]
    batcher = Batcher(batch=16).attach(backend)
    try:
        together = _held(batcher, len(requests_audio),
                         lambda i: _texts(batcher.transcribe_chunks(requests_audio[i], EN)))
        assert (batcher.batches, batcher.mixed) == (1, 1)  # every request in one batch
    finally:
        batcher.close()
    assert together == alone
    assert all(t.strip() for texts in alone for t in texts)


def test_a_full_batch_waits_and_other_options_never_mix(tiny, requests_audio):
    _, backend = tiny
    batcher = Batcher(batch=3).attach(backend)
    fr = replace(EN, initial_prompt="Bonjour.")
    try:
        # jobs of 2, 1, 2, 1 chunks, the third with another prompt: {0, 1} (3 chunks), {2}, {3}
        _held(batcher, 4, lambda i: batcher.transcribe_chunks(requests_audio[i], fr if i == 2 else EN))
        assert (batcher.batches, batcher.mixed) == (3, 1)
    finally:
        batcher.close()


class _FailsOn:
    """The real backend, except that a batch holding ``poison`` fails (a fault injected the
    way a backend bug or an out-of-memory error on one input would surface)."""

    def __init__(self, backend, poison: np.ndarray) -> None:
        self.backend, self.poison, self.calls = backend, poison, []

    def transcribe_chunks(self, chunks, options):
        self.calls.append(len(chunks))
        if any(c is self.poison for c in chunks):
            raise RuntimeError("CUDA out of memory (injected)")
        return self.backend.transcribe_chunks(chunks, options)


def test_a_failing_mixed_batch_fails_only_its_request(tiny, requests_audio):
    _, backend = tiny
    poison = requests_audio[1][0]
    faulty = _FailsOn(backend, poison)
    batcher = Batcher(batch=16).attach(faulty)  # type: ignore[arg-type]

    def work(i):
        try:
            return _texts(batcher.transcribe_chunks(requests_audio[i], EN))
        except RuntimeError as exc:
            return str(exc)

    try:
        got = _held(batcher, 3, work)
    finally:
        batcher.close()
    assert got[1] == "CUDA out of memory (injected)"
    assert got[0] == _texts(backend.transcribe_chunks(requests_audio[0], EN))
    assert got[2] == _texts(backend.transcribe_chunks(requests_audio[2], EN))
    # the mixed batch (2 + 1 + 2 chunks), then each request alone, in the order they arrived
    assert faulty.calls[0] == 5 and sorted(faulty.calls[1:]) == [1, 2, 2]


def test_batch_size_follows_the_backend_unless_set(tiny):
    settings, backend = tiny

    class Declares:
        max_batch = 96

    assert batch_size(replace(settings, batch_size=0), Declares()) == 96
    assert batch_size(replace(settings, batch_size=12), Declares()) == 12
    assert batch_size(replace(settings, batch_size=0), backend) == DEFAULT_BATCH  # faster-whisper declares none
    assert Settings.from_env({}).batch_size == 0


def test_concurrent_http_requests_match_sequential_ones(launch, tiny_en_dir, tmp_path, english_clips):
    """Through the real server (4 decode workers, one model thread): the transcripts of
    concurrent requests are those of the same requests one at a time, and batches mixed."""
    server = launch(tiny_en_dir, tmp_path, WHISPER_MAX_CONCURRENCY="4", WHISPER_MAX_QUEUE="16")
    try:
        bodies = [c.path.read_bytes() for c in english_clips]
        headers = {"X-Amzn-SageMaker-Custom-Attributes": "language=en&beam_size=1"}

        def post(body):
            r = server.post(body, headers=headers)
            assert r.status_code == 200, r.text
            return Transcript.from_json(r.text).text

        one_by_one = [post(b) for b in bodies]
        assert server.ping().json()["mixed_batches"] == 0
        for _ in range(3):  # concurrency is up to the scheduler: a few tries to see a mixed batch
            with ThreadPoolExecutor(len(bodies)) as pool:
                assert list(pool.map(post, bodies)) == one_by_one
            if server.ping().json()["mixed_batches"] > 0:
                break
        assert server.ping().json()["mixed_batches"] > 0
    finally:
        assert server.stop() == 0, server.log()
