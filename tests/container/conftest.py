"""Fixtures for the inference-server tests: real servers on 127.0.0.1 ports, real clips.

Servers are real subprocesses (``python -m whisper_server``), started with the same
environment variables SageMaker would set, and shared per module or session because
starting one costs a couple of seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import numpy as np
import pytest

from whisper_eval.clips import Clip, load_clips
from whisper_eval.encode import encode
from whisper_local.net import free_port

SR = 16_000


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def post(self, body: bytes, *, params: dict | None = None, headers: dict | None = None,
             timeout: float = 120) -> httpx.Response:
        return httpx.post(f"{self.url}/invocations", content=body, params=params, headers=headers,
                          timeout=timeout)

    def ping(self, timeout: float = 2.0) -> httpx.Response:
        return httpx.get(f"{self.url}/ping", timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, count: str, value: int, timeout: float = 20) -> None:
        """Until /ping's count of requests ``count`` (admitted | receiving) equals ``value``:
        the server's own account of its work, not a log line."""
        end = time.monotonic() + timeout
        while self.ping().json()[count] != value:
            assert time.monotonic() < end and self.proc.poll() is None, self.log()
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(model_dir: Path, tmp: Path, wait: bool = True, **env: str) -> Server:
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    environ = {**os.environ, "WHISPER_MODEL_DIR": str(model_dir), "WHISPER_DEVICE": "cpu",
               "WHISPER_CPU_THREADS": "2", **env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "whisper_server", "--host", "127.0.0.1", "--port", str(port)],
                                env=environ, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    if wait:
        wait_ready(server)
    return server


def wait_ready(server: Server, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log()}")
        try:
            if server.ping().status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready in {timeout} s:\n{server.log()}")


@pytest.fixture(scope="session")
def tiny_server(tiny_en_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tiny_en_dir, tmp_path_factory.mktemp("tiny"), WHISPER_MODEL_NAME="tiny.en",
                          WHISPER_MAX_CONCURRENCY="2", WHISPER_MAX_QUEUE="64")
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="session")
def clips() -> list[Clip]:
    return load_clips()


@pytest.fixture(scope="session")
def english_clips(clips: list[Clip]) -> list[Clip]:
    return [c for c in clips if c.language == "en"]


@pytest.fixture(scope="session")
def flac() -> Callable[..., bytes]:
    return encode  # FLAC, 16-bit, 16 kHz by default


@dataclass(frozen=True)
class LongFile:
    audio: np.ndarray
    placements: list[tuple[Clip, float, float]]  # clip, start s, end s

    @property
    def reference(self) -> str:
        return " ".join(c.reference for c, _, _ in self.placements)


def build_long(clips: list[Clip], gaps: list[float]) -> LongFile:
    """Clips end to end with the given silences between them (16 kHz mono)."""
    from whisper_server.audio import decode_all

    parts, placements, t = [], [], 0.0
    for clip, gap in zip(clips, gaps):
        silence = np.zeros(int(gap * SR), dtype=np.float32)
        samples = decode_all(clip.path)
        parts += [silence, samples]
        t += gap
        placements.append((clip, t, t + len(samples) / SR))
        t += len(samples) / SR
    parts.append(np.zeros(SR, dtype=np.float32))
    return LongFile(np.concatenate(parts), placements)


@pytest.fixture(scope="session")
def long_file(english_clips: list[Clip]) -> LongFile:
    """About 75 s: every shipped English clip but the 53 s sonnet, with 1.5-4 s of silence
    between them."""
    chosen = [c for c in english_clips if "sonnet" not in c.name]
    return build_long(chosen, [1.5, 4.0, 2.0, 3.0, 1.5, 2.5, 3.5, 2.0][: len(chosen)])


@pytest.fixture(scope="session")
def short_long_file(english_clips: list[Clip]) -> LongFile:
    """About 35 s of the short clips, for tests that shrink the VAD window."""
    chosen = [c for c in english_clips if c.duration < 10]
    return build_long(chosen, [1.0, 2.5, 1.5, 3.0, 1.5, 2.0, 1.0][: len(chosen)])


@pytest.fixture(scope="session")
def launch() -> Callable[..., Server]:
    """``launch(model_dir, tmp, wait=True, **env)`` -> a started Server (the caller stops it)."""
    return start_server
