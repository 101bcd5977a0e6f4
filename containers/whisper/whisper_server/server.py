"""The SageMaker bring-your-own-container HTTP server: ``GET /ping`` and ``POST /invocations``.

The model loads in a background thread so ``/ping`` answers (503, then 200) from the first
second. Each request's body is streamed to a temporary file, decoded by a bounded pool of
worker threads, and answered with the transcript or an ``ErrorRecord``; the event loop
never decodes, so ``/ping`` stays fast while the workers are busy. After SIGTERM the server
stops taking work and gives in-flight requests ``shutdown_grace_s`` to finish before
failing them with a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import AsyncIterator, Callable

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from whisper_contract import CONTENT_TYPES, ContractError, ErrorCode, RequestOptions, render
from whisper_server.backends import Backend, DecodeOptions, load_backend
from whisper_server.backends.base import SAMPLE_RATE
from whisper_server.negotiate import CUSTOM_ATTRIBUTES, choose_format, parse_options
from whisper_server.pipeline import transcribe_file
from whisper_server.settings import Settings

log = logging.getLogger("whisper_server")

_POLL_S = 0.25


def error_response(error: ContractError, **context: object) -> Response:
    return Response(error.to_record(**context).to_json(), status_code=error.status,
                    media_type=CONTENT_TYPES["json"])


class WhisperService:
    """State shared by the routes: the backend, the worker pool and the admission count."""

    def __init__(self, settings: Settings, backend_factory: Callable[[Settings], Backend] = load_backend) -> None:
        self.settings = settings
        self.backend_factory = backend_factory
        self.backend: Backend | None = None
        self.load_error: str | None = None
        self.executor = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="decode")
        self.admitted = 0  # decoding + queued
        self.drain_started: float | None = None
        self.on_fatal: Callable[[], None] = lambda: None
        self.loader: Future[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------
    def load(self) -> None:
        """Load and warm up the model (runs in a background thread at start-up)."""
        started = time.perf_counter()
        try:
            backend = self.backend_factory(self.settings)
            # One tiny decode so the first real request does not pay for lazy initialisation.
            backend.transcribe_chunks([np.zeros(SAMPLE_RATE, dtype=np.float32)], DecodeOptions(language="en"))
            self.backend = backend
            log.info("model %s ready in %.1f s (%s)", backend.info.model, time.perf_counter() - started, backend.info)
        except Exception as exc:  # noqa: BLE001 - any load failure must stop the server loudly
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load from %s", self.settings.model_dir)
            self.on_fatal()

    def begin_drain(self) -> None:
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            log.info("SIGTERM: refusing new work; %d request(s) in flight get %.0f s", self.admitted,
                     self.settings.shutdown_grace_s)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.backend is not None:
            self.backend.close()

    # --- routes -------------------------------------------------------------------------
    async def ping(self, request: Request) -> Response:
        if self.backend is None or self.drain_started is not None:
            reason = self.load_error or ("shutting down" if self.drain_started else "model is loading")
            return error_response(ContractError(ErrorCode.NOT_READY, f"not ready: {reason}"))
        # A backend with a child process (tritonserver) reports its death here, so SageMaker
        # replaces the instance instead of sending it work that can only fail.
        if not getattr(self.backend, "alive", lambda: True)():
            return error_response(ContractError(ErrorCode.NOT_READY, "not ready: the inference backend died"))
        return Response('{"status": "ready"}', media_type=CONTENT_TYPES["json"])

    async def invocations(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await self._invoke(request)
        except ContractError as exc:
            response = error_response(exc)
        except Exception as exc:  # noqa: BLE001 - one bad request must not take the server down
            log.exception("internal error")
            response = error_response(ContractError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"))
        log.info("POST /invocations %d %.2fs %s", response.status_code, time.perf_counter() - started,
                 request.url.query or request.headers.get(CUSTOM_ATTRIBUTES, ""))
        return response

    async def _invoke(self, request: Request) -> Response:
        backend = self.backend
        if backend is None or self.drain_started is not None:
            raise ContractError(ErrorCode.NOT_READY, "the server is not ready (model loading or shutting down)")
        limit = self.settings.max_concurrency + self.settings.max_queue
        if self.admitted >= limit:
            raise ContractError(ErrorCode.OVERLOADED,
                                f"{self.admitted} requests are already in progress or queued (limit {limit}); retry later")
        self.admitted += 1
        try:
            options = parse_options(request.url.query, request.headers.get(CUSTOM_ATTRIBUTES))
            fmt = choose_format(request.headers.get("accept"), options)
            deadline = time.monotonic() + self.settings.request_timeout_s
            async with self._spooled(request) as path:
                log.info("request admitted: %d bytes, %d in progress or queued", path.stat().st_size, self.admitted)
                transcript = await self._run(path, options, backend, deadline)
            return Response(render(transcript, fmt), media_type=CONTENT_TYPES[fmt])
        finally:
            self.admitted -= 1

    @contextlib.asynccontextmanager
    async def _spooled(self, request: Request) -> AsyncIterator[Path]:
        """Stream the body to a temporary file, enforcing the size limit as it arrives."""
        limit = self.settings.max_input_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ContractError(ErrorCode.INPUT_TOO_LARGE, f"the body is {int(declared)} bytes; the limit is {limit}")
        fd, name = tempfile.mkstemp(prefix="whisper-", suffix=".audio")
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                async for part in request.stream():
                    size += len(part)
                    if size > limit:
                        raise ContractError(ErrorCode.INPUT_TOO_LARGE, f"the body exceeds the limit of {limit} bytes")
                    out.write(part)
            if size == 0:
                raise ContractError(ErrorCode.EMPTY_INPUT, "the request body is empty: send the audio file's bytes")
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    async def _run(self, path: Path, options: RequestOptions, backend: Backend, deadline: float):
        cancel = threading.Event()
        future = asyncio.wrap_future(self.executor.submit(
            transcribe_file, path, options, backend, self.settings, deadline=deadline, cancel=cancel))
        try:
            while True:
                now = time.monotonic()
                if self.drain_started is not None and now > self.drain_started + self.settings.shutdown_grace_s:
                    raise ContractError(ErrorCode.NOT_READY, "the server shut down before this request finished; "
                                        "send it again")
                # The pipeline checks the deadline between batches; this also cuts a long batch.
                if now > deadline:
                    raise ContractError(ErrorCode.TIMEOUT,
                                        f"the request took longer than {self.settings.request_timeout_s:.0f} s")
                done, _ = await asyncio.wait({future}, timeout=_POLL_S)
                if done:
                    return future.result()
        finally:
            cancel.set()  # no-op when finished; otherwise the worker stops at its next check


def create_app(service: WhisperService) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Loaded on a decode worker: the thread that loads a CTranslate2 model should be one
        # that stays alive and runs its requests.
        service.loader = service.executor.submit(service.load)
        yield
        service.close()

    app = Starlette(routes=[
        Route("/ping", service.ping, methods=["GET"]),
        Route("/invocations", service.invocations, methods=["POST"]),
    ], lifespan=lifespan)
    app.state.service = service
    return app


class _Server(uvicorn.Server):
    """uvicorn, plus: SIGTERM first puts the service into drain mode."""

    def __init__(self, config: uvicorn.Config, service: WhisperService) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: object) -> None:
        self.service.begin_drain()
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        # uvicorn re-raises captured signals on exit; a drained SIGTERM is a clean stop (0).
        captured = getattr(self, "_captured_signals", [])
        if sig == signal.SIGTERM and sig in captured:
            captured.remove(sig)


def serve(settings: Settings, host: str, port: int) -> int:
    service = WhisperService(settings)
    config = uvicorn.Config(
        create_app(service), host=host, port=port, log_config=None, access_log=False,
        # uvicorn's own cut-off comes after ours, so in-flight requests get a JSON answer.
        timeout_graceful_shutdown=int(settings.shutdown_grace_s + 3), timeout_keep_alive=75,
    )
    server = _Server(config, service)
    failed = threading.Event()

    def fatal() -> None:
        failed.set()
        server.should_exit = True

    service.on_fatal = fatal
    server.run()
    if service.loader is not None and not service.loader.done():
        # SIGTERM while the model is still loading: the native loader cannot be interrupted,
        # and interpreter shutdown under it aborts the process; leave at once instead.
        logging.shutdown()
        os._exit(0)
    return 1 if failed.is_set() else 0
