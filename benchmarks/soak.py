"""Bounded loopback soak of the real inference server: many concurrent clients, memory and
latency recorded, back-pressure checked.

    python benchmarks/soak.py [--clients 200] [--duration 180] [--max-requests 20000]

Starts ``python -m whisper_server`` on 127.0.0.1 (CPU, bundled tiny.en) with
``WHISPER_MAX_CONCURRENCY`` (= MaxConcurrentInvocationsPerInstance) and ``WHISPER_MAX_QUEUE``
small, so ``--clients`` far exceeds what it admits. Every client loops: POST a real 2 s clip;
on 200 check the transcript; on 429 back off 1-3 s (what SageMaker's async queue does for the
container) and retry. Any other answer, a non-JSON error, or a hang counts as an error. Meanwhile
``/ping`` is timed every second (SageMaker's health check must stay fast under load) and the
server's RSS (process tree) is sampled. After the soak the server must still answer, and a
SIGTERM must stop it cleanly. Writes ``--out`` (JSON) and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil

from whisper_local.net import free_port

AUDIO = Path(__file__).resolve().parents[1] / "tests" / "data" / "audio" / "en_librispeech_test-clean_2830-3980-0043.flac"


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def rss_mib(proc: psutil.Process) -> float:
    try:
        procs = [proc, *proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20
    except psutil.Error:
        return 0.0


class Soak:
    def __init__(self, url: str, clients: int, duration: float, max_requests: int, timeout: float) -> None:
        self.url, self.clients, self.duration, self.max_requests, self.timeout = url, clients, duration, max_requests, timeout
        self.body = AUDIO.read_bytes()
        self.ok: list[float] = []
        self.rejected: list[float] = []
        self.errors: list[str] = []
        self.pings: list[float] = []
        self.sent = 0
        self.deadline = 0.0
        self.peak_in_flight = 0
        self.in_flight = 0

    async def client(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        while time.monotonic() < self.deadline and self.sent < self.max_requests:
            self.sent += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            started = time.perf_counter()
            try:
                r = await http.post(f"{self.url}/invocations", content=self.body, timeout=self.timeout)
                elapsed = time.perf_counter() - started
                if r.status_code == 200 and "experience" in r.json()["text"].lower():
                    self.ok.append(elapsed)
                elif r.status_code == 429 and r.json()["error"]["code"] == "overloaded":
                    self.rejected.append(elapsed)
                    await asyncio.sleep(rng.uniform(1, 3))
                else:
                    self.errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                self.in_flight -= 1

    async def pinger(self, http: httpx.AsyncClient) -> None:
        while time.monotonic() < self.deadline:
            started = time.perf_counter()
            try:
                r = await http.get(f"{self.url}/ping", timeout=10)
                if r.status_code != 200:
                    self.errors.append(f"/ping {r.status_code}")
                self.pings.append(time.perf_counter() - started)
            except httpx.HTTPError as exc:
                self.errors.append(f"/ping {type(exc).__name__}")
            await asyncio.sleep(1)

    async def run(self) -> None:
        self.deadline = time.monotonic() + self.duration
        limits = httpx.Limits(max_connections=self.clients + 5, max_keepalive_connections=self.clients + 5)
        async with httpx.AsyncClient(limits=limits) as http:
            rng = random.Random(8)
            await asyncio.gather(self.pinger(http), *(self.client(http, random.Random(rng.random()))
                                                      for _ in range(self.clients)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=180, help="seconds of load")
    parser.add_argument("--max-requests", type=int, default=20_000, help="stop sending after this many")
    parser.add_argument("--concurrency", type=int, default=2, help="WHISPER_MAX_CONCURRENCY")
    parser.add_argument("--queue", type=int, default=8, help="WHISPER_MAX_QUEUE")
    parser.add_argument("--threads", type=int, default=2, help="WHISPER_CPU_THREADS")
    parser.add_argument("--out", type=Path, default=Path("build/soak/soak.json"))
    args = parser.parse_args(argv)

    from whisper_server.bundled import bundled_model_dir

    port = free_port()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.out.with_suffix(".server.log")
    env = {**os.environ, "WHISPER_MODEL_DIR": str(bundled_model_dir("tiny.en")), "WHISPER_MODEL_NAME": "tiny.en",
           "WHISPER_DEVICE": "cpu", "WHISPER_MAX_CONCURRENCY": str(args.concurrency),
           "WHISPER_MAX_QUEUE": str(args.queue), "WHISPER_CPU_THREADS": str(args.threads)}
    with log_path.open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "whisper_server", "--host", "127.0.0.1", "--port", str(port),
                                   "--log-level", "WARNING"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"server exited: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        proc = psutil.Process(server.pid)
        rss_start = rss_mib(proc)
        samples: list[float] = []
        soak = Soak(url, args.clients, args.duration, args.max_requests, timeout=120)

        async def with_sampler() -> None:
            async def sample() -> None:
                while time.monotonic() < soak.deadline or soak.in_flight:
                    samples.append(rss_mib(proc))
                    await asyncio.sleep(1)
            await asyncio.gather(soak.run(), sample())

        started = time.monotonic()
        asyncio.run(with_sampler())
        wall = time.monotonic() - started
        healthy_after = httpx.get(f"{url}/ping", timeout=5).status_code == 200
        after = httpx.post(f"{url}/invocations", content=soak.body, timeout=60)
        rss_end = rss_mib(proc)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            exit_status = server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            exit_status = "killed after 60 s"

    result = {
        "command": f"python benchmarks/soak.py --clients {args.clients} --duration {args.duration:g} "
                   f"--concurrency {args.concurrency} --queue {args.queue} --threads {args.threads}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus (shared), loopback",
        "model": "tiny.en (faster-whisper, CPU int8 default)", "clip": AUDIO.name,
        "clients": args.clients, "wall_s": round(wall, 1), "requests_sent": soak.sent,
        "transcripts_200": len(soak.ok), "rejected_429": len(soak.rejected), "errors": len(soak.errors),
        "error_samples": soak.errors[:10],
        "throughput_per_s": round(len(soak.ok) / wall, 2),
        "latency_200_s": {"p50": pct(soak.ok, 0.5), "p95": pct(soak.ok, 0.95), "p99": pct(soak.ok, 0.99),
                          "max": pct(soak.ok, 1.0), "mean": round(statistics.fmean(soak.ok), 3) if soak.ok else None},
        "latency_429_s": {"p50": pct(soak.rejected, 0.5), "p99": pct(soak.rejected, 0.99),
                          "max": pct(soak.rejected, 1.0)},
        "ping_s": {"p50": pct(soak.pings, 0.5), "p99": pct(soak.pings, 0.99), "max": pct(soak.pings, 1.0),
                   "count": len(soak.pings)},
        "client_side_peak_in_flight": soak.peak_in_flight,
        "server_rss_mib": {"start": round(rss_start, 1), "peak": round(max(samples, default=0), 1),
                           "end": round(rss_end, 1)},
        "healthy_after": healthy_after, "request_after_soak": after.status_code,
        "sigterm_exit_status": exit_status,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ok = (not soak.errors and healthy_after and after.status_code == 200 and exit_status == 0 and soak.rejected)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
