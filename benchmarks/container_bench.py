"""CPU benchmarks of the inference server (issue 4), written for docs/benchmarks.md.

    python benchmarks/container_bench.py [--only accuracy,longform,memory,load] [--hour-minutes 60]

1. accuracy/speed: every English clip of the corpus (/work/shared/audio when present, else
   the shipped clips), through the real server over HTTP and through raw faster-whisper
   (WhisperModel.transcribe, same model, same threads), interleaved clip by clip in one run:
   corpus WER (Whisper's English normaliser) and real-time factor of each.
2. long-form: a >= 3 min file (clips with silences) through the pipeline with batch_size 8
   vs batch_size 1 (one chunk at a time), and raw sequential faster-whisper.
3. memory: peak RSS of the server process transcribing a 10-minute and a 1-hour file.
4. load: 100 concurrent requests on loopback: all answered, none lost, /ping latency.

Results go to stdout (markdown) and benchmarks/results/container.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import psutil

from whisper_eval.clips import SHARED, SHIPPED, Clip, load_clips
from whisper_eval.encode import encode
from whisper_eval.wer import edit_distance, normalize
from whisper_server.audio import decode_all
from whisper_server.bundled import bundled_model_dir

REPO = Path(__file__).resolve().parents[1]
SR = 16_000
THREADS = 2
ROUNDS = 3  # per clip and path; the best of them is the least disturbed by other load


def corpus() -> list[Clip]:
    folder = SHARED if (SHARED / "MANIFEST.tsv").exists() else SHIPPED
    return [c for c in load_clips(folder) if c.language == "en"]


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    edits = words = 0
    for ref, hyp in pairs:
        r, h = normalize(ref).split(), normalize(hyp).split()
        edits += edit_distance(r, h)
        words += len(r)
    return edits / max(words, 1)


def long_audio(clips: list[Clip], seconds: float, gap: float = 1.5) -> tuple[np.ndarray, str]:
    parts, refs, total = [], [], 0.0
    decoded = [(c, decode_all(c.path)) for c in clips]
    i = 0
    while total < seconds:
        clip, samples = decoded[i % len(decoded)]
        parts += [np.zeros(int(gap * SR), np.float32), samples]
        refs.append(clip.reference)
        total += gap + len(samples) / SR
        i += 1
    return np.concatenate(parts), " ".join(refs)


class ServerProc:
    def __init__(self, model_dir: Path, **env: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(f"/tmp/container-bench-{self.port}.log", "wb")
        environ = {**os.environ, "WHISPER_MODEL_DIR": str(model_dir), "WHISPER_DEVICE": "cpu",
                   "WHISPER_CPU_THREADS": str(THREADS), "WHISPER_MODEL_NAME": "tiny.en", **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "whisper_server", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--log-level", "WARNING"],
                                     env=environ, stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def post(self, body: bytes, **kw) -> httpx.Response:
        return httpx.post(f"{self.url}/invocations", content=body, timeout=kw.pop("timeout", 3600), **kw)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def bench_accuracy(model_dir: Path) -> dict:
    from faster_whisper import WhisperModel

    clips = corpus()
    raw = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=THREADS)
    raw.transcribe(np.zeros(SR, np.float32))  # warm-up, as the server's
    server = ServerProc(model_dir)
    raw_pairs, srv_pairs, audio_s, rows = [], [], 0.0, []
    raw_sum = srv_sum = raw_best = srv_best = 0.0
    try:
        for clip in clips:
            body = clip.path.read_bytes()

            def run_raw() -> tuple[str, float]:
                t0 = time.perf_counter()
                segments, _ = raw.transcribe(str(clip.path), beam_size=5, language="en")
                return "".join(s.text for s in segments), time.perf_counter() - t0

            def run_server() -> tuple[str, float, int]:
                t0 = time.perf_counter()
                response = server.post(body)
                text = response.json()["text"] if response.status_code == 200 else ""
                return text, time.perf_counter() - t0, response.status_code

            raw_times, srv_times = [], []
            for round_ in range(ROUNDS):
                # alternate who goes first, so a burst of load on the shared machine hits both
                if round_ % 2:
                    (srv_text, srv_s, status), (raw_text, raw_s) = run_server(), run_raw()
                else:
                    (raw_text, raw_s), (srv_text, srv_s, status) = run_raw(), run_server()
                raw_times.append(raw_s)
                srv_times.append(srv_s)
            raw_sum += sum(raw_times) / ROUNDS
            srv_sum += sum(srv_times) / ROUNDS
            raw_best += min(raw_times)
            srv_best += min(srv_times)
            audio_s += clip.duration
            raw_pairs.append((clip.reference, raw_text))
            srv_pairs.append((clip.reference, srv_text))
            rows.append({"clip": clip.name, "duration": clip.duration, "status": status,
                         "raw_s": [round(t, 3) for t in raw_times], "server_s": [round(t, 3) for t in srv_times],
                         "raw_wer": round(corpus_wer([(clip.reference, raw_text)]), 3),
                         "server_wer": round(corpus_wer([(clip.reference, srv_text)]), 3)})
            print(rows[-1], flush=True)
    finally:
        server.stop()
    return {"clips": len(clips), "audio_s": round(audio_s, 1), "rounds": ROUNDS,
            "raw_wer": round(corpus_wer(raw_pairs), 4), "server_wer": round(corpus_wer(srv_pairs), 4),
            "raw_rtf_mean": round(raw_sum / audio_s, 4), "server_rtf_mean": round(srv_sum / audio_s, 4),
            "overhead_mean": round(srv_sum / raw_sum - 1, 4),
            "raw_rtf_best": round(raw_best / audio_s, 4), "server_rtf_best": round(srv_best / audio_s, 4),
            "overhead_best": round(srv_best / raw_best - 1, 4), "rows": rows}


def bench_longform(model_dir: Path, seconds: float = 200) -> dict:
    from faster_whisper import WhisperModel

    from whisper_contract import RequestOptions
    from whisper_server.backends import load_backend
    from whisper_server.pipeline import transcribe_file
    from whisper_server.settings import Settings

    audio, reference = long_audio(corpus(), seconds)
    path = Path("/tmp/container-bench-long.flac")
    path.write_bytes(encode(audio))
    out = {"audio_s": round(len(audio) / SR, 1)}
    for batch in (8, 1):
        settings = Settings(model_dir=str(model_dir), device="cpu", cpu_threads=THREADS, batch_size=batch)
        backend = load_backend(settings)
        t0 = time.perf_counter()
        t = transcribe_file(path, RequestOptions(), backend, settings)
        out[f"pipeline_batch{batch}_s"] = round(time.perf_counter() - t0, 2)
        out[f"pipeline_batch{batch}_wer"] = round(corpus_wer([(reference, t.text)]), 4)
        backend.close()
        print(out, flush=True)
    raw = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=THREADS)
    t0 = time.perf_counter()
    text = "".join(s.text for s in raw.transcribe(str(path), beam_size=5, language="en")[0])
    out["raw_sequential_s"] = round(time.perf_counter() - t0, 2)
    out["raw_sequential_wer"] = round(corpus_wer([(reference, text)]), 4)
    out["speedup_batch8_vs_batch1"] = round(out["pipeline_batch1_s"] / out["pipeline_batch8_s"], 3)
    out["speedup_batch8_vs_raw_sequential"] = round(out["raw_sequential_s"] / out["pipeline_batch8_s"], 3)
    print(out, flush=True)
    return out


def _peak_rss(server: ServerProc, body: bytes) -> dict:
    proc = psutil.Process(server.proc.pid)
    base = proc.memory_info().rss
    peak, stop = [base], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    r = server.post(body)
    elapsed = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return {"status": r.status_code, "seconds": round(elapsed, 1), "rss_before_mb": round(base / 2**20),
            "peak_rss_mb": round(peak[0] / 2**20), "body_mb": round(len(body) / 2**20, 1),
            "transcript_chars": len(r.json().get("text", "")) if r.status_code == 200 else 0}


def bench_memory(model_dir: Path, hour_minutes: float) -> dict:
    clips = corpus()
    server = ServerProc(model_dir)
    out = {}
    try:
        for minutes in (10, hour_minutes):
            audio, _ = long_audio(clips, minutes * 60, gap=3.0)
            path = Path(f"/tmp/container-bench-{int(minutes)}min.flac")
            path.write_bytes(encode(audio))
            del audio
            out[f"{int(minutes)}min"] = _peak_rss(server, path.read_bytes())
            out[f"{int(minutes)}min"]["audio_min"] = minutes
            print(out, flush=True)
    finally:
        server.stop()
    return out


def bench_load(model_dir: Path, n: int = 100) -> dict:
    short = [c for c in load_clips(SHIPPED) if c.language == "en" and c.duration < 6]
    server = ServerProc(model_dir, WHISPER_MAX_CONCURRENCY="2", WHISPER_MAX_QUEUE=str(n))
    pings: list[float] = []
    done = threading.Event()

    def pinger() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            ok = httpx.get(f"{server.url}/ping", timeout=10).status_code == 200
            pings.append(time.perf_counter() - t0 if ok else float("inf"))
            time.sleep(0.5)

    try:
        ping_thread = threading.Thread(target=pinger)
        ping_thread.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda i: server.post(short[i % len(short)].path.read_bytes(), timeout=600),
                                    range(n)))
        elapsed = time.perf_counter() - t0
        done.set()
        ping_thread.join()
        healthy = httpx.get(f"{server.url}/ping", timeout=2).status_code == 200
        codes: dict[int, int] = {}
        for r in results:
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
        wrong = sum(1 for i, r in enumerate(results) if r.status_code == 200
                    and corpus_wer([(short[i % len(short)].reference, r.json()["text"])]) > 0.5)
    finally:
        exit_code = server.stop()
    return {"requests": n, "answered": len(results), "status_counts": codes, "seconds": round(elapsed, 1),
            "max_ping_s": round(max(pings), 3), "pings": len(pings), "healthy_after": healthy,
            "transcripts_off_reference": wrong, "clean_exit": exit_code == 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="accuracy,longform,memory,load")
    parser.add_argument("--hour-minutes", type=float, default=60)
    args = parser.parse_args()
    model_dir = bundled_model_dir("tiny.en")
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
               "machine": f"{platform.node()} {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
               "load_avg_start": os.getloadavg(), "model": "tiny.en (CTranslate2 int8, CPU, 2 threads)"}
    for part in args.only.split(","):
        t0 = time.perf_counter()
        if part == "accuracy":
            results[part] = bench_accuracy(model_dir)
        elif part == "longform":
            results[part] = bench_longform(model_dir)
        elif part == "memory":
            results[part] = bench_memory(model_dir, args.hour_minutes)
        elif part == "load":
            results[part] = bench_load(model_dir)
        results[f"{part}_wall_s"] = round(time.perf_counter() - t0, 1)
    results["load_avg_end"] = os.getloadavg()
    out = REPO / "benchmarks" / "results" / "container.json"
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing.update(results)
    out.write_text(json.dumps(existing, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "accuracy"}, indent=2))
    if "accuracy" in results:
        print(json.dumps({k: v for k, v in results["accuracy"].items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
