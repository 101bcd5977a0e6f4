"""The SageMaker bring-your-own-container HTTP server: ``GET /ping`` and ``POST /invocations``.

The model loads in a background thread so ``/ping`` answers (503, then 200) from the first
second. Each request's body is streamed to a file in a private per-request folder (slow
bodies are cut off), and only then admitted to a bounded pool of decode workers, so clients
that upload slowly hold no decode slot. The answer is the transcript or an ``ErrorRecord``;
the event loop never decodes, so ``/ping`` stays fast while the workers are busy. A request
whose client goes away, or that runs out of time, has its work cancelled (the pipeline stops
at its next check). After SIGTERM the server keeps listening (``/ping`` answers 503), gives
in-flight requests ``shutdown_grace_s`` to finish, fails the rest with a clear error and
exits at most ``EXIT_SLACK_S`` later, whatever a worker is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
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
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from whisper_contract import CONTENT_TYPES, ContractError, ErrorCode, RequestOptions, Transcript, render
from whisper_contract.options import FORMATS, LANGUAGES, OPTION_ALIASES, OPTION_NAMES, TASKS
from whisper_server.backends import Backend, DecodeOptions, load_backend
from whisper_server.batcher import Batcher
from whisper_server.backends.base import SAMPLE_RATE
from whisper_server.metering import Meter
from whisper_server.negotiate import CUSTOM_ATTRIBUTES, choose_format, parse_options
from whisper_server.pipeline import transcribe_file
from whisper_server.settings import Settings

log = logging.getLogger("whisper_server")

_POLL_S = 0.25
# After the grace, the process exits at most this much later even if a worker is still in a
# batch (it cannot be interrupted): answers are sent, SageMaker's SIGKILL (30 s after SIGTERM)
# must never be what ends us.
EXIT_SLACK_S = 2.0
# Request folders are named whisper-<pid>-<random>: a start-up removes those of dead processes.
SPOOL_PREFIX = "whisper-"
# Option values safe to log as they are (enumerations); anything else is logged as its size.
_LOGGABLE_VALUES = {"language": LANGUAGES | {"auto", ""}, "task": set(TASKS), "vad": None,
                    "word_timestamps": None, "beam_size": None, "redact": None, "redact_output": None,
                    "max_line_chars": None, "max_lines": None, "max_cue_s": None, "min_gap_ms": None,
                    "confidence_threshold": None}
_KNOWN_OPTIONS = set(OPTION_NAMES) | set(OPTION_ALIASES)


class ClientGone(Exception):
    """The client closed the connection; nobody is left to answer."""


def describe_options(*raw: str | None) -> str:
    """Option names and value sizes for the log, never user text (prompts, hotwords, unknown
    keys): enumerated values are shown, free text only as its length."""
    from urllib.parse import parse_qsl

    parts = []
    for text in raw:
        for key, value in parse_qsl(text or "", keep_blank_values=True):
            name = key.strip().lower().replace("-", "_")
            if name not in _KNOWN_OPTIONS:
                parts.append(f"<unknown option, {len(key)} chars>")
            elif name in ("formats", "format", "output") and all(f.strip() in FORMATS for f in value.split(",")):
                parts.append(f"{name}={value}")
            elif name in _LOGGABLE_VALUES and (len(value) <= 8 if _LOGGABLE_VALUES[name] is None
                                               else value.strip().lower() in _LOGGABLE_VALUES[name]):
                parts.append(f"{name}={value.strip()}")
            else:
                parts.append(f"{name}=<{len(value)} chars>")
    return " ".join(parts) or "-"


def clean_spool(root: Path) -> int:
    """Remove the request folders that a killed server (SIGKILL, OOM) left behind: those of
    processes that no longer exist, and any carrying our own pid (a restarted container is
    pid 1 again). Folders of live servers sharing the temp dir are left alone."""
    removed = 0
    for entry in root.glob(f"{SPOOL_PREFIX}*-*"):
        pid_text = entry.name[len(SPOOL_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or not entry.is_dir():
            continue
        pid = int(pid_text)
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # alive
            except PermissionError:
                continue  # alive, another user's
            except ProcessLookupError:
                pass
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def error_response(error: ContractError, **context: object) -> Response:
    return Response(error.to_record(**context).to_json(), status_code=error.status,
                    media_type=CONTENT_TYPES["json"])


class WhisperService:
    """State shared by the routes: the backend, the worker pool and the admission count."""

    def __init__(self, settings: Settings, backend_factory: Callable[[Settings], Backend] = load_backend) -> None:
        self.settings = settings
        self.backend_factory = backend_factory
        self.backend: Backend | None = None
        # Every model call goes through the batcher's one model thread (batcher.py).
        self.batcher = Batcher()
        self.load_error: str | None = None
        self.executor = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="decode")
        self.admitted = 0  # decoding + queued (bodies fully received)
        self.receiving = 0  # bodies still arriving: they hold no decode slot
        self.busy_workers = 0  # decodes running on a worker (a cancelled one runs to its next check)
        self._busy_lock = threading.Lock()
        self.spool_root = Path(settings.spool_dir or tempfile.gettempdir())
        self.drain_started: float | None = None
        self.on_fatal: Callable[[], None] = lambda: None
        self.loader: Future[None] | None = None
        self.meter = Meter(settings.instance_type)  # each transcript's cost block

    # --- lifecycle ----------------------------------------------------------------------
    def load(self) -> None:
        """Load and warm up the model (runs in a background thread at start-up)."""
        started = time.perf_counter()
        try:
            backend = self.batcher.load(lambda: self.backend_factory(self.settings), self.settings)
            # One tiny decode so the first real request does not pay for lazy initialisation.
            self.batcher.transcribe_chunks([np.zeros(SAMPLE_RATE, dtype=np.float32)], DecodeOptions(language="en"))
            self.backend = backend
            log.info("model %s ready in %.1f s (%s); batches of up to %d chunks", backend.info.model,
                     time.perf_counter() - started, backend.info, self.batcher.max_batch)
        except Exception as exc:  # noqa: BLE001 - any load failure must stop the server loudly
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load from %s", self.settings.model_dir)
            self.on_fatal()

    def begin_drain(self) -> None:
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            log.info("SIGTERM: refusing new work; %d request(s) in flight get %.1f s", self.admitted + self.receiving,
                     self.settings.shutdown_grace_s)

    def _transcribe(self, *args: object, **kwargs: object) -> Transcript:
        with self._busy_lock:
            self.busy_workers += 1
        try:
            return self.meter.run(lambda: transcribe_file(*args, **kwargs))  # type: ignore[arg-type]
        finally:
            with self._busy_lock:
                self.busy_workers -= 1

    @property
    def idle(self) -> bool:
        return self.admitted == 0 and self.receiving == 0

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.batcher.close()
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
        # The counts let an operator (and the tests) see admitted work without reading logs.
        body = json.dumps({"status": "ready", "admitted": self.admitted, "receiving": self.receiving,
                           "batches": self.batcher.batches, "mixed_batches": self.batcher.mixed})
        return Response(body, media_type=CONTENT_TYPES["json"])

    async def invocations(self, request: Request) -> Response:
        started = time.perf_counter()
        options = describe_options(request.url.query, request.headers.get(CUSTOM_ATTRIBUTES))
        try:
            response = await self._invoke(request)
        except ClientGone as exc:
            log.info("POST /invocations client disconnected %s after %.2fs; options: %s", exc,
                     time.perf_counter() - started, options)
            return Response(status_code=400)  # nobody reads it
        except ContractError as exc:
            response, code = error_response(exc), exc.code.value
        except Exception as exc:  # noqa: BLE001 - one bad request must not take the server down
            log.exception("internal error")
            response = error_response(ContractError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"))
            code = ErrorCode.INTERNAL.value
        else:
            code = "ok"
        log.info("POST /invocations %d %s %.2fs options: %s", response.status_code, code,
                 time.perf_counter() - started, options)
        return response

    async def _invoke(self, request: Request) -> Response:
        if self.backend is None or self.drain_started is not None:
            raise ContractError(ErrorCode.NOT_READY, "the server is not ready (model loading or shutting down)")
        options = parse_options(request.url.query, request.headers.get(CUSTOM_ATTRIBUTES))
        fmt = choose_format(request.headers.get("accept"), options)
        deadline = time.monotonic() + self.settings.request_timeout_s
        async with self._spooled(request) as path:
            # Admitted only now: a client still uploading (however slowly) holds no slot.
            limit = self.settings.max_concurrency + self.settings.max_queue
            if self.admitted >= limit:
                raise ContractError(ErrorCode.OVERLOADED, f"{self.admitted} requests are already in progress "
                                    f"or queued (limit {limit}); retry later")
            self.admitted += 1
            try:
                log.info("request admitted: %d bytes, %d in progress or queued", path.stat().st_size, self.admitted)
                transcript = await self._run(request, path, options, deadline)
            finally:
                self.admitted -= 1
        return Response(render(transcript, fmt), media_type=CONTENT_TYPES[fmt])

    @contextlib.asynccontextmanager
    async def _spooled(self, request: Request) -> AsyncIterator[Path]:
        """Stream the body into a private folder (one per request, mode 0700), enforcing the
        size limit and the slow-body rules as it arrives."""
        limit = self.settings.max_input_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ContractError(ErrorCode.INPUT_TOO_LARGE, f"the body is {int(declared)} bytes; the limit is {limit}")
        folder = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=self.spool_root))
        path = folder / "body"
        self.receiving += 1
        try:
            try:
                await self._receive_body(request, path, limit)
            finally:
                self.receiving -= 1
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def _receive_body(self, request: Request, path: Path, limit: int) -> None:
        idle_s, min_rate = self.settings.body_idle_timeout_s, self.settings.min_body_rate
        started = time.monotonic()
        size = 0
        parts = request.stream().__aiter__()
        with path.open("wb") as out:
            while True:
                try:
                    part = await asyncio.wait_for(parts.__anext__(), timeout=idle_s)
                except StopAsyncIteration:
                    break
                except ClientDisconnect:
                    raise ClientGone(f"during the upload, after {size} bytes") from None
                except asyncio.TimeoutError:
                    raise ContractError(ErrorCode.TIMEOUT, f"the request body stalled: nothing arrived for "
                                        f"{idle_s:g} s after {size} bytes") from None
                size += len(part)
                if size > limit:
                    raise ContractError(ErrorCode.INPUT_TOO_LARGE, f"the body exceeds the limit of {limit} bytes")
                elapsed = time.monotonic() - started
                if elapsed > idle_s and size < min_rate * elapsed:
                    raise ContractError(ErrorCode.TIMEOUT, f"the request body arrives too slowly: {size} bytes in "
                                        f"{elapsed:.0f} s (at least {min_rate} bytes/s are needed)")
                out.write(part)
        if size == 0:
            raise ContractError(ErrorCode.EMPTY_INPUT, "the request body is empty: send the audio file's bytes")

    async def _run(self, request: Request, path: Path, options: RequestOptions, deadline: float) -> Transcript:
        cancel = threading.Event()
        future = asyncio.wrap_future(self.executor.submit(
            self._transcribe, path, options, self.batcher, self.settings, deadline=deadline, cancel=cancel))
        gone = asyncio.ensure_future(_disconnected(request))
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
                done, _ = await asyncio.wait({future, gone}, timeout=_POLL_S, return_when=asyncio.FIRST_COMPLETED)
                if future in done:
                    return future.result()
                if gone in done:
                    raise ClientGone("during the decode; its work is cancelled")
        finally:
            cancel.set()  # no-op when finished; otherwise the worker stops at its next check
            gone.cancel()
            # A cancelled decode ends in a ContractError nobody awaits: take it, unlogged.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body is already read, so the
    only message left for this request is ``http.disconnect``)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(service: WhisperService) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Started from a decode worker; the batcher's model thread builds the model and runs
        # every decode (a CTranslate2 model is best used by the thread that loaded it).
        removed = clean_spool(service.spool_root)
        if removed:
            log.info("removed %d request folder(s) left by a killed server", removed)
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
    """uvicorn, plus a SIGTERM drain: the server keeps listening (``/ping`` says 503, new work
    is refused) until in-flight requests are done or the grace is over, then stops; the
    process is gone ``EXIT_SLACK_S`` after the grace even if a worker is mid-batch."""

    def __init__(self, config: uvicorn.Config, service: WhisperService) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: object) -> None:
        if sig == signal.SIGTERM and self.service.drain_started is None:
            self.service.begin_drain()
            threading.Thread(target=self._drain, name="drain", daemon=True).start()
            return
        super().handle_exit(sig, frame)  # type: ignore[arg-type]  # a second signal: stop now

    def _drain(self) -> None:
        grace = self.service.settings.shutdown_grace_s
        end = time.monotonic() + grace + _POLL_S  # in-flight requests answer 503 at `grace`
        while not self.service.idle and time.monotonic() < end:
            time.sleep(0.05)
        self.should_exit = True
        # Stop the clock, not the worker: a batch cannot be interrupted, and SageMaker's kill
        # must not be what ends us (it would cut answers already being sent).
        time.sleep(max(0.0, end + EXIT_SLACK_S - _POLL_S - time.monotonic()))
        log.warning("exiting %.1f s after SIGTERM with a decode still running", grace + EXIT_SLACK_S)
        logging.shutdown()
        os._exit(0)


def serve(settings: Settings, host: str, port: int) -> int:
    service = WhisperService(settings)
    config = uvicorn.Config(
        create_app(service), host=host, port=port, log_config=None, access_log=False,
        # Our drain has answered every request before uvicorn stops; this only bounds the rest.
        timeout_graceful_shutdown=int(EXIT_SLACK_S), timeout_keep_alive=max(1, round(settings.keep_alive_s)),
    )
    server = _Server(config, service)
    failed = threading.Event()

    def fatal() -> None:
        failed.set()
        server.should_exit = True

    service.on_fatal = fatal
    server.run()
    code = 1 if failed.is_set() else 0
    if service.loader is not None and not service.loader.done() or service.busy_workers:
        # SIGTERM while the model is still loading (the native loader cannot be interrupted,
        # and interpreter shutdown under it aborts the process), or a cancelled decode still
        # in its batch (the interpreter would wait for it): leave at once instead.
        logging.shutdown()
        os._exit(code)
    return code
