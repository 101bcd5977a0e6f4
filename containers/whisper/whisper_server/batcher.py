"""Cross-request batching: one model thread; the chunks of every request in flight share batches.

Each request's pipeline (its own worker thread) hands its chunks here and waits; the model
thread takes the oldest waiting job and every other job with the same decode options, up to
``batch_size`` chunks, and decodes them as one batch. So 64 concurrent 2-minute files fill
the GPU's batch as one long file does, instead of each running its own batch of 4.

A job is never split, so a request's chunks stay in one call and in order. If a batch that
mixes requests fails, each request's chunks run again alone: one bad request (or one that
trips a backend bug) fails only itself. All model work, language detection and loading
included, runs on the model thread: CUDA graph capture must not meet another thread's
kernels, and a CTranslate2 model is best used by the thread that loaded it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from whisper_contract import ModelInfo, Segment
from whisper_server.decoding import Backend, Capabilities, DecodeOptions
from whisper_server.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
# Without WHISPER_BATCH_SIZE and with a backend that declares no ``max_batch``.
DEFAULT_BATCH = 8


def batch_size(settings: Settings, backend: object) -> int:
    """WHISPER_BATCH_SIZE if set (> 0), else the backend's own choice (the torch backend's
    memory model: ``max_batch``), else DEFAULT_BATCH."""
    return settings.batch_size or int(getattr(backend, "max_batch", 0) or DEFAULT_BATCH)


@dataclass
class _Job:
    chunks: list[np.ndarray]
    options: DecodeOptions | None  # None: a call (fn) to run on the model thread
    fn: Callable[[], Any] | None = None
    future: Future[Any] = field(default_factory=Future)


class Batcher:
    """What the pipeline needs of a backend (info, capabilities, detect_language,
    transcribe_chunks), served by one model thread that batches across requests."""

    def __init__(self, batch: int = DEFAULT_BATCH) -> None:
        self.max_batch = batch
        self._backend: Backend | None = None
        self._jobs: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.batches = 0  # decoded batches, and how many of them mixed requests (tests, logs)
        self.mixed = 0
        self._thread = threading.Thread(target=self._loop, name="model", daemon=True)
        self._thread.start()

    # --- set-up -------------------------------------------------------------------------
    def load(self, factory: Callable[[], Backend], settings: Settings | None = None) -> Backend:
        """Build the backend on the model thread; the batch size follows it unless set."""
        backend = self.call(factory)
        self._backend = backend
        if settings is not None:
            self.max_batch = batch_size(settings, backend)
        return backend

    def attach(self, backend: Backend) -> "Batcher":
        """Use an already-built backend (tests, benchmarks)."""
        self._backend = backend
        return self

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("the batcher has no backend yet")
        return self._backend

    # --- the Backend surface the pipeline uses ------------------------------------------
    @property
    def info(self) -> ModelInfo:
        return self.backend.info

    @property
    def capabilities(self) -> Capabilities:
        return self.backend.capabilities

    @property
    def multilingual(self) -> bool:
        return self.backend.multilingual

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        return self.call(lambda: self.backend.detect_language(audio))

    def transcribe_chunks(self, chunks: Sequence[np.ndarray], options: DecodeOptions) -> list[list[Segment]]:
        """Blocks until this request's chunks are decoded, in a batch with others' if any wait."""
        if not chunks:
            return []
        return self._submit(_Job(list(chunks), options))  # type: ignore[no-any-return]

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the model thread and return its result (or raise its error)."""
        return self._submit(_Job([], None, fn))  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    # --- the model thread ---------------------------------------------------------------
    def _submit(self, job: _Job) -> Any:
        with self._cv:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._jobs.append(job)
            self._cv.notify()
        return job.future.result()

    def _take(self) -> list[_Job] | None:
        """The oldest job, and the later ones with its options while the batch has room."""
        with self._cv:
            while not self._jobs and not self._closed:
                self._cv.wait()
            if self._closed:
                for job in self._jobs:
                    job.future.set_exception(RuntimeError("the server is shutting down"))
                self._jobs.clear()
                return None
            first = self._jobs.popleft()
            if first.options is None:
                return [first]
            taken, room = [first], self.max_batch - len(first.chunks)
            for job in list(self._jobs):
                if job.options == first.options and len(job.chunks) <= room:
                    self._jobs.remove(job)
                    taken.append(job)
                    room -= len(job.chunks)
            return taken

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            if jobs[0].fn is not None:
                _settle(jobs[0], jobs[0].fn)
                continue
            self.batches += 1
            if len(jobs) == 1:
                _settle(jobs[0], lambda: self.backend.transcribe_chunks(jobs[0].chunks, jobs[0].options))
                continue
            self.mixed += 1
            try:
                results = self.backend.transcribe_chunks([c for j in jobs for c in j.chunks], jobs[0].options)
            except Exception:  # noqa: BLE001 - retried per request below, so each gets its own answer
                log.warning("a batch of %d requests failed; running each alone", len(jobs), exc_info=True)
                for job in jobs:
                    _settle(job, lambda job=job: self.backend.transcribe_chunks(job.chunks, job.options))
                continue
            at = 0
            for job in jobs:
                job.future.set_result(results[at:at + len(job.chunks)])
                at += len(job.chunks)


def _settle(job: _Job, fn: Callable[[], Any]) -> None:
    try:
        job.future.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - the request's thread raises it
        job.future.set_exception(exc)
