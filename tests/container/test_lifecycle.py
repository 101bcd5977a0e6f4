"""Start-up and shutdown as SageMaker drives them: readiness, SIGTERM drain, bad model."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

from whisper_contract import ErrorRecord, Transcript
from whisper_eval.wer import wer
from whisper_server.server import EXIT_SLACK_S

AUDIO = Path(__file__).resolve().parents[1] / "data" / "audio"
CLIP = AUDIO / "en_ljspeech_LJ001-0001.flac"
LJ_REFERENCE = ("Printing, in the only sense with which we are at present concerned, differs from most if not "
                "from all the arts and crafts represented in the Exhibition")


def _post_in_thread(server, body: bytes) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["response"] = server.post(body, timeout=60)
        except httpx.HTTPError as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_sigterm_lets_the_request_in_flight_finish(tiny_en_dir, tmp_path, launch):
    server = launch(tiny_en_dir, tmp_path)
    thread, out = _post_in_thread(server, CLIP.read_bytes())
    server.wait_for("admitted", 1)
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # Draining, the server still listens: /ping says 503 (not a refused connection), so
    # SageMaker sees an instance going away rather than a dead one.
    ping = server.ping()
    assert ping.status_code == 503 and ErrorRecord.from_json(ping.text).code == "not_ready"
    assert "shutting down" in ping.text
    thread.join(60)
    response = out["response"]
    assert response.status_code == 200, response.text
    assert wer(LJ_REFERENCE, Transcript.from_json(response.text).text) < 0.1
    assert server.proc.wait(timeout=30) == 0
    assert time.monotonic() - signalled < 30
    assert "SIGTERM" in server.log()


def test_sigterm_grace_runs_out_with_a_clear_error(tiny_en_dir, tmp_path, launch, long_file, flac):
    # One batch of every chunk of a 75 s file: the worker is inside a long uninterruptible
    # batch when the grace runs out, and the exit must not wait for it.
    server = launch(tiny_en_dir, tmp_path, WHISPER_SHUTDOWN_GRACE_S="0.5", WHISPER_BATCH_SIZE="16")
    thread, out = _post_in_thread(server, flac(long_file.audio))
    server.wait_for("admitted", 1)
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    thread.join(60)
    response = out["response"]
    assert response.status_code == 503, response.text
    err = ErrorRecord.from_json(response.text)
    assert err.code == "not_ready" and "shut down" in err.message
    assert server.proc.wait(timeout=30) == 0
    # grace + EXIT_SLACK_S (server.py), plus process start-up noise on a loaded machine
    assert time.monotonic() - signalled < 0.5 + EXIT_SLACK_S + 1.5


def test_uploads_left_by_a_killed_server_are_removed_at_start(tiny_en_dir, tmp_path, launch):
    spool = tmp_path / "spool"
    spool.mkdir()
    server = launch(tiny_en_dir, tmp_path, WHISPER_SPOOL_DIR=str(spool))
    host, port = server.url.removeprefix("http://").split(":")
    body = CLIP.read_bytes()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body[:20_000])
        end = time.monotonic() + 10
        while not list(spool.glob("whisper-*/body")):
            assert time.monotonic() < end, server.log()
            time.sleep(0.05)
        server.proc.kill()
        server.proc.wait()
    left = list(spool.iterdir())
    assert len(left) == 1 and left[0].stat().st_mode & 0o777 == 0o700  # private to the server
    alive = spool / f"whisper-{os.getpid()}-live"  # a live process's folder (this test's) stays
    alive.mkdir()
    restarted = launch(tiny_en_dir, tmp_path, WHISPER_SPOOL_DIR=str(spool))
    try:
        assert list(spool.iterdir()) == [alive]
        assert "removed 1 request folder" in restarted.log()
    finally:
        assert restarted.stop() == 0


def test_ping_is_503_until_the_model_loads_and_a_bad_model_exits(base_dir, tmp_path, launch):
    server = launch(base_dir, tmp_path, wait=False)  # base takes a second or more to load
    seen: list[int] = []
    end = time.monotonic() + 90
    try:
        while 200 not in seen:
            assert time.monotonic() < end and server.proc.poll() is None, server.log()
            try:
                seen.append(server.ping().status_code)
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.02)
    finally:
        server.stop()
    first_200 = seen.index(200)
    assert first_200 > 0 and set(seen[:first_200]) == {503}, seen
    empty = tmp_path / "no-model"
    empty.mkdir()
    server = launch(empty, tmp_path, wait=False)
    assert server.proc.wait(timeout=60) == 1
    assert "model failed to load" in server.log()


def test_sigterm_while_the_model_loads_exits_cleanly(base_dir, tmp_path, launch):
    server = launch(base_dir, tmp_path, wait=False)
    end = time.monotonic() + 30
    while True:  # until it listens; base takes a second or more to load after that
        assert time.monotonic() < end and server.proc.poll() is None, server.log()
        try:
            ping = server.ping()
            break
        except httpx.TransportError:
            time.sleep(0.02)
    assert ping.status_code == 503 and "model is loading" in ping.text  # the SIGTERM lands mid-load
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0, server.log()
