"""The real inference server behind a fault-injecting front, launched as the pipeline's container.

``python chaos_container.py --port P`` starts ``python -m whisper_server`` on a private port and
forwards ``GET /ping`` and ``POST /invocations`` to it. A test queues faults with
``POST /_chaos`` (``{"actions": ["status:503", "kill", ...]}``); each ``/invocations`` request
takes the next action (none left: pass through):

- ``status:N``: answer N with an ``ErrorRecord`` body instead of forwarding (overload, crash).
- ``kill``: forward, then SIGKILL the server while it decodes; the client's connection is
  dropped without an answer, as when an instance dies. A supervisor restarts the server (as
  SageMaker replaces an unhealthy instance), and requests arriving meanwhile wait for it.

``GET /_chaos`` returns the counters. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from whisper_contract import ContractError, ErrorCode
from whisper_local.net import free_port

READY_TIMEOUT_S = 120
_STATUS_CODES = {429: ErrorCode.OVERLOADED, 503: ErrorCode.NOT_READY}


class Inner:
    """The real server process, restarted whenever it dies."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.ready = threading.Event()
        self.restarts = 0
        self.stopping = False
        self.lock = threading.Lock()

    def start(self) -> None:
        self.ready.clear()
        self.proc = subprocess.Popen([sys.executable, "-m", "whisper_server", "--host", "127.0.0.1",
                                      "--port", str(self.port)], stdin=subprocess.DEVNULL)
        threading.Thread(target=self._watch, args=(self.proc,), daemon=True).start()

    def _watch(self, proc: subprocess.Popen) -> None:
        while proc.poll() is None:
            try:
                if not self.ready.is_set() and httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    self.ready.set()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.ready.clear()
        with self.lock:
            if self.stopping:
                return
            self.restarts += 1
        print(f"chaos: server exited with {proc.returncode}; restarting", flush=True)
        self.start()

    def kill(self) -> None:
        self.ready.clear()  # at once: requests from now on wait for the restart
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Chaos:
    def __init__(self, inner: Inner) -> None:
        self.inner = inner
        self.actions: deque[str] = deque()
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "passed": 0, "injected_status": 0, "killed": 0, "dropped": 0}

    def next_action(self) -> str:
        with self.lock:
            self.counts["requests"] += 1
            return self.actions.popleft() if self.actions else "pass"

    def count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def status(self) -> dict:
        with self.lock:
            return {**self.counts, "pending_actions": len(self.actions), "restarts": self.inner.restarts,
                    "ready": self.inner.ready.is_set()}


def handler_class(chaos: Chaos) -> type[BaseHTTPRequestHandler]:
    inner = chaos.inner
    http = httpx.Client(timeout=httpx.Timeout(3600, connect=5))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/_chaos":
                self._send(200, json.dumps(chaos.status()).encode())
            elif self.path == "/ping":
                self._send(200 if inner.ready.is_set() else 503, b"{}")
            else:
                self._send(404, b"{}")

        def do_POST(self) -> None:  # noqa: N802
            body = self._body()
            if self.path == "/_chaos":
                with chaos.lock:
                    chaos.actions.extend(json.loads(body)["actions"])
                self._send(200, json.dumps(chaos.status()).encode())
                return
            if self.path.split("?")[0] != "/invocations":
                self._send(404, b"{}")
                return
            action = chaos.next_action()
            if action.startswith("status:"):
                status = int(action.split(":")[1])
                code = _STATUS_CODES.get(status, ErrorCode.INTERNAL)
                record = ContractError(code, f"chaos: injected HTTP {status}").to_record()
                chaos.count("injected_status")
                self._send(status, record.to_json().encode())
                return
            # Requests wait for a (re)started server, as queued async requests do.
            if not inner.ready.wait(READY_TIMEOUT_S):
                self._drop()
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            if action == "kill":
                threading.Timer(0.3, inner.kill).start()
                chaos.count("killed")
            try:
                response = http.post(f"{inner.url}{self.path}", content=body, headers=headers)
            except httpx.HTTPError:
                self._drop()
                return
            chaos.count("passed")
            self._send(response.status_code, response.content,
                       response.headers.get("content-type", "application/json"))

        def _drop(self) -> None:
            """Close the connection without an answer: what a dead instance looks like."""
            chaos.count("dropped")
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    inner = Inner()
    inner.start()
    chaos = Chaos(inner)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_class(chaos))
    server.daemon_threads = True

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    finally:
        inner.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
