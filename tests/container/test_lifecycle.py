"""Start-up and shutdown as SageMaker drives them: readiness, SIGTERM drain, bad model."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from whisper_contract import ErrorRecord, Transcript
from whisper_eval.wer import wer

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


def _wait_admitted(server, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while "request admitted" not in server.log():
        assert time.monotonic() < end, server.log()
        time.sleep(0.05)


def test_sigterm_lets_the_request_in_flight_finish(tiny_en_dir, tmp_path, launch):
    server = launch(tiny_en_dir, tmp_path)
    thread, out = _post_in_thread(server, CLIP.read_bytes())
    _wait_admitted(server)
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    thread.join(60)
    response = out["response"]
    assert response.status_code == 200, response.text
    assert wer(LJ_REFERENCE, Transcript.from_json(response.text).text) < 0.1
    assert server.proc.wait(timeout=30) == 0
    assert time.monotonic() - signalled < 30
    assert "SIGTERM" in server.log()


def test_sigterm_grace_runs_out_with_a_clear_error(tiny_en_dir, tmp_path, launch, long_file, flac):
    server = launch(tiny_en_dir, tmp_path, WHISPER_SHUTDOWN_GRACE_S="0.5", WHISPER_BATCH_SIZE="1")
    thread, out = _post_in_thread(server, flac(long_file.audio))
    _wait_admitted(server)
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    thread.join(60)
    response = out["response"]
    assert response.status_code == 503, response.text
    err = ErrorRecord.from_json(response.text)
    assert err.code == "not_ready" and "shut down" in err.message
    assert time.monotonic() - signalled < 10
    assert server.proc.wait(timeout=30) == 0


def test_ping_is_503_until_the_model_loads_and_a_bad_model_exits(tmp_path, launch):
    empty = tmp_path / "no-model"
    empty.mkdir()
    server = launch(empty, tmp_path, wait=False)
    assert server.proc.wait(timeout=60) == 1
    assert "model failed to load" in server.log()


def test_sigterm_while_the_model_loads_exits_cleanly(base_dir, tmp_path, launch):
    server = launch(base_dir, tmp_path, wait=False)
    end = time.monotonic() + 30
    while "startup complete" not in server.log() and time.monotonic() < end:
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)  # base takes a second or more to load
    assert server.proc.wait(timeout=30) == 0, server.log()
