"""Fuzz the server's HTTP edge: slow bodies and clients that disconnect (issue 12 items 4, 9).

Loopback only. Each generated case opens a raw connection, sends the headers of a real clip's
upload and some prefix of its body in pieces with pauses, then stalls, closes mid-upload,
closes after the body (mid-decode), or finishes. The oracle: no 500 and no traceback in the
server's log, an answer for every client that stayed (200, or 504 for a too-slow body), and
``/ping`` 200 afterwards. The server has sub-second body limits so a case costs about a second;
CI runs a handful of cases (``FUZZ_HTTP_EXAMPLES``), the campaign as many as it asks for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whisper_eval.net import status_of
from whisper_local.net import free_port

PROFILE = settings(settings.get_profile(os.environ.get("FUZZ_PROFILE", "fuzz-ci")),
                   max_examples=int(os.environ.get("FUZZ_HTTP_EXAMPLES", "6")))
CLIP = (Path(__file__).resolve().parents[1] / "data" / "audio" / "en_librispeech_test-clean_2830-3980-0043.flac")
LIMITS = {"WHISPER_BODY_IDLE_TIMEOUT_S": "0.6", "WHISPER_MIN_BODY_RATE": "20000", "WHISPER_KEEP_ALIVE_S": "1",
          "WHISPER_MAX_CONCURRENCY": "1", "WHISPER_MAX_QUEUE": "2", "WHISPER_CPU_THREADS": "2",
          "WHISPER_DEVICE": "cpu"}


@pytest.fixture(scope="module")
def http_server(tiny_en_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("fuzz-http") / "server.log"
    env = {**os.environ, "WHISPER_MODEL_DIR": str(tiny_en_dir), **LIMITS}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "whisper_server", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    end = time.monotonic() + 120
    while True:
        assert proc.poll() is None and time.monotonic() < end, log_path.read_text()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                break
        time.sleep(0.2)
    yield "127.0.0.1", port, log_path
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(40) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


@PROFILE
@given(pieces=st.integers(1, 6), pause_s=st.sampled_from([0.0, 0.05, 0.3, 0.8]),
       sent_share=st.floats(0.0, 1.0), ending=st.sampled_from(["stall", "close", "close_after_body", "finish"]))
def test_slow_and_vanishing_clients_never_break_the_server(http_server, pieces, pause_s, sent_share, ending):
    host, port, log_path = http_server
    body = CLIP.read_bytes()
    sent = len(body) if ending in ("close_after_body", "finish") else int(len(body) * sent_share * 0.99)
    sock = socket.create_connection((host, port), timeout=30)
    try:
        sock.sendall(f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        step = max(1, -(-sent // pieces))
        with contextlib.suppress(OSError):  # the server may already have cut a slow body off
            for at in range(0, sent, step):
                sock.sendall(body[at:at + step])
                time.sleep(pause_s)
        if ending == "stall":
            assert status_of(sock) == 504  # too slow or stalled: answered, not held
        elif ending == "finish":
            assert status_of(sock) in (200, 504)  # 504: the pauses made the body too slow
        elif ending == "close_after_body":
            time.sleep(0.3)
    finally:
        sock.close()
    assert httpx.get(f"http://{host}:{port}/ping", timeout=5).status_code == 200
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]
