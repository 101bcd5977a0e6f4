"""Fuzzing fixtures: hypothesis budgets, a real server with small limits, a loopback moto,
and a tally of every generated input's outcome.

Budgets: CI runs the ``fuzz-ci`` profile (a fixed seed, a few dozen inputs per target, < 90 s for
the folder). ``benchmarks/fuzz_campaign.py`` runs the same tests with ``FUZZ_PROFILE=fuzz-campaign``
and ``FUZZ_EXAMPLES=N`` and reads the tallies from ``$FUZZ_STATS_DIR``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, settings

from whisper_local.net import free_port

CORPUS = Path(__file__).with_name("corpus")
STATS_DIR = Path(os.environ.get("FUZZ_STATS_DIR", "build/fuzz"))

_COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)
# Registered, not loaded: other folders' hypothesis tests keep their own settings. Tests here
# use ``@settings(settings.get_profile(os.environ.get("FUZZ_PROFILE", "fuzz-ci")))``.
settings.register_profile("fuzz-ci", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "25")), derandomize=True,
                          **_COMMON)
settings.register_profile("fuzz-campaign", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), **_COMMON)


@dataclass
class Tally:
    """Outcomes per fuzz target; written as JSON when the session ends."""

    name: str
    outcomes: Counter = field(default_factory=Counter)
    max_latency_s: float = 0.0
    failures: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, latency_s: float = 0.0) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            self.max_latency_s = max(self.max_latency_s, latency_s)

    def fail(self, description: str, payload: bytes, suffix: str = ".bin") -> Path:
        """Keep a breaking input where it can be added to the regression corpus (the first
        few: hypothesis's shrinking would otherwise save hundreds of variants)."""
        if len(self.failures) >= 20:
            return STATS_DIR
        out = STATS_DIR / "failures" / self.name
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{len(self.failures):04d}{suffix}"
        path.write_bytes(payload)
        self.failures.append({"file": str(path), "what": description})
        return path

    def write(self) -> None:
        STATS_DIR.mkdir(parents=True, exist_ok=True)
        (STATS_DIR / f"{self.name}.json").write_text(json.dumps({
            "target": self.name, "inputs": sum(self.outcomes.values()), "outcomes": dict(self.outcomes),
            "max_latency_s": round(self.max_latency_s, 3), "failures": self.failures}, indent=2))


_TALLIES: dict[str, Tally] = {}


@pytest.fixture(scope="session")
def tally() -> Iterator:
    def get(name: str) -> Tally:
        return _TALLIES.setdefault(name, Tally(name))

    yield get
    for t in _TALLIES.values():
        t.write()


@dataclass
class FuzzServer:
    proc: subprocess.Popen
    url: str
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


# Small limits so size/length/time limits are reachable by generated inputs.
SERVER_LIMITS = {"WHISPER_MAX_INPUT_BYTES": str(2 << 20), "WHISPER_MAX_AUDIO_S": "90",
                 "WHISPER_REQUEST_TIMEOUT_S": "60", "WHISPER_MAX_CONCURRENCY": "1", "WHISPER_MAX_QUEUE": "32",
                 "WHISPER_CPU_THREADS": "2", "WHISPER_DEVICE": "cpu"}


@pytest.fixture(scope="session")
def fuzz_server(tiny_en_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("fuzz-server") / "server.log"
    env = {**os.environ, "WHISPER_MODEL_DIR": str(tiny_en_dir), "WHISPER_MODEL_NAME": "tiny.en", **SERVER_LIMITS}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "whisper_server", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    server = FuzzServer(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 120
    while True:
        assert server.alive(), server.log()
        try:
            if httpx.get(f"{server.url}/ping", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    yield server
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(40) == 0, server.log()
    finally:
        if proc.poll() is None:
            proc.kill()
