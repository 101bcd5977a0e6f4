"""End-to-end GPU benchmark (issue 15): audio through the real server, next to model-only.

Runs on the device machine (no network; PyAV, starlette and uvicorn carried as wheels):

  python benchmarks/e2e_gpu.py run --out $OUT [--cores 0-3] [--model forced|base --model-dir DIR]
  python benchmarks/e2e_gpu.py cpu-reference --out FILE   (here: the CPU path's base transcripts)

What it measures, all in one run, on the same audio:
- files: real speech (the shipped English clips, laid end to end with short pauses) as MP3:
  one 1-hour file and 64 files of 1-5 minutes;
- front end alone (PyAV decode + resample + VAD + chunking, the pipeline's own generators)
  on the server's cores, with the VAD in NumPy and on the GPU;
- model only: the very chunks the VAD cut from the 1-hour file, through the benchmark
  backend at the server's batch size;
- end to end: the real server (HTTP, spooling, decode, VAD, batching, JSON) pinned to
  ``--cores`` (4 cores stand in for an ml.g5.xlarge), the client on the other cores.

``--model forced`` (default): large-v3's shape with random bf16 weights that decodes exactly
100 tokens per chunk (end of text suppressed, as benchmarks/gpu_bench.py's model-only
figures), so the compute per chunk matches the model-only benchmark; transcripts are
meaningless. ``--model base --model-dir DIR``: the real multilingual base weights through
the torch backend, and the shipped clips' transcripts scored against the CPU path's
(benchmarks/results/base_cpu_reference.json, made by ``cpu-reference``).

The server runs as in production (batcher, front-end producer threads, VadStream on the
GPU) with WHISPER_MAX_CONCURRENCY 64 so concurrent requests share batches. The model
thread's busy time (encoder / decoder / alignment, CUDA-synchronised per batch) is written by
the server to a stats file, which gives the wall-time breakdown. Results: $OUT/e2e_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
AUDIO = REPO / "tests" / "data" / "audio"
SR = 16000
TOKENS = 100
BATCH = int(os.environ.get("E2E_BATCH", "32"))  # the server's batch (WHISPER_BATCH_SIZE)
BUCKETS = tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= BATCH)
STATS_FILE = os.environ.get("E2E_STATS", "")
# E2E_DEVICE=cpu with --small: a smoke test of the script itself on a machine without a GPU.
DEVICE = os.environ.get("E2E_DEVICE", "cuda")


def _speech() -> np.ndarray:
    from whisper_server import audio

    clips = [audio.decode_all(p) for p in sorted(AUDIO.glob("en_*"))]
    gap = np.zeros(int(0.6 * SR), dtype=np.float32)
    return np.concatenate([x for c in clips for x in (c, gap)])


def _mp3(pcm: np.ndarray, path: Path) -> None:
    import av

    with av.open(str(path), "w", format="mp3") as out:
        stream = out.add_stream("mp3", rate=SR, layout="mono")
        stream.bit_rate = 64000
        frame_len = 1152
        for at in range(0, len(pcm), frame_len * 64):
            block = pcm[at : at + frame_len * 64]
            frame = av.AudioFrame.from_ndarray(block[None, :].astype(np.float32), format="flt", layout="mono")
            frame.sample_rate = SR
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _plan(small: bool) -> tuple[float, list[tuple[int, float]]]:
    """The hour's length, and (start sample, seconds) of each short file: fixed by the seed."""
    rng = np.random.default_rng(0)
    hour_s, n_files, lo, hi = (120, 4, 20, 40) if small else (3600, 64, 60, 300)
    n = len(_speech())
    return float(hour_s), [(int(rng.integers(0, n)), float(s)) for s in
                           (rng.uniform(lo, hi) for _ in range(n_files))]


def _make(job: tuple[Path, int, float]) -> None:
    path, start, seconds = job
    speech = _speech()
    pcm = np.roll(np.resize(speech, int(seconds * SR) + len(speech)), -start)[: int(seconds * SR)]
    _mp3(pcm, path)


def make_files(folder: Path, small: bool = False) -> tuple[Path, list[Path], float, float]:
    """One long file and many short ones of real speech as MP3, encoded in parallel; kept in
    ``folder`` for the next run on the same machine."""
    from concurrent.futures import ProcessPoolExecutor

    folder = folder / ("small" if small else "full")
    folder.mkdir(parents=True, exist_ok=True)
    hour_s, plan = _plan(small)
    big = folder / "hour.mp3"
    small_files = [folder / f"f{i:02d}.mp3" for i in range(len(plan))]
    jobs = [(big, 0, hour_s)] + [(p, start, sec) for p, (start, sec) in zip(small_files, plan)]
    if not (folder / "done").exists():
        with ProcessPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
            list(pool.map(_make, jobs))
        (folder / "done").write_text("ok")
    return big, small_files, hour_s, sum(sec for _, sec in plan)


class ForcedBackend:
    """large-v3 shape, random bf16 weights, exactly TOKENS greedy tokens per chunk (end of
    text suppressed): the model-only benchmark's compute behind the server's protocol."""

    def __init__(self, name: str = "large-v3") -> None:
        import torch

        from whisper_contract import ModelInfo
        from whisper_server.decoding import Capabilities
        from whisper_server.backends.torch_model import PRESETS, random_model

        import gpu_bench  # beside this script, so on the path of `python benchmarks/e2e_gpu.py`

        self.gb = gpu_bench
        self.torch = torch
        self.model = random_model(PRESETS[name], "cuda", torch.bfloat16)
        self.capabilities = Capabilities(multilingual=False, word_timestamps=False, max_beam=1, timestamps=False)
        self.multilingual = False
        self.word_timestamps = False
        self.info = ModelInfo(model=f"{name}-random-forced{TOKENS}", backend="torch", version=torch.__version__,
                              device="cuda", compute_type="bfloat16")
        self._steps: dict[int, tuple] = {}
        self._lock = threading.Lock()
        self.max_batch = BATCH
        self.stats = {"batches": 0, "chunks": 0, "encoder_s": 0.0, "decoder_s": 0.0, "model_s": 0.0}
        for b in BUCKETS:  # capture every graph now, not while requests run
            self._step(b)

    def _step(self, b: int):
        if b not in self._steps:
            state = self.model.decoder.new_state(b, ctx=self.gb.PROMPT_LEN + TOKENS + 4)
            self._steps[b] = (state, self.gb.ForcedStep(self.model.decoder, state, TOKENS))
        return self._steps[b]

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        return "en", 1.0

    def healthy(self) -> bool:
        return True

    def transcribe_chunks(self, chunks, options):
        from whisper_contract import Segment

        torch, gb = self.torch, self.gb
        with self._lock, torch.no_grad():
            t0 = time.perf_counter()
            b = next(x for x in BUCKETS if x >= len(chunks))
            state, step = self._step(b)
            host = np.zeros((b, gb.CHUNK), dtype=np.float32)
            for i, c in enumerate(chunks):
                host[i, : len(c)] = c
            audio = torch.from_numpy(host).to("cuda")
            lengths = torch.tensor([len(c) for c in chunks] + [gb.CHUNK] * (b - len(chunks)), device="cuda")
            enc = self.model.encoder(self.model.features(audio, lengths))
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            self.model.decoder.set_cross(state, enc)
            prompt = torch.tensor([[gb.SOT, gb.EN, gb.TRANSCRIBE, gb.NO_TS]], device="cuda")
            logits = self.model.decoder(prompt.expand(b, -1), torch.zeros(1, dtype=torch.long, device="cuda"), state)
            logits[:, gb.EOT] = float("-inf")
            first = logits.argmax(-1, keepdim=True)
            step.out[:, :1] = first
            step.tokens.copy_(first)
            step.pos.fill_(gb.PROMPT_LEN)
            for _ in range(TOKENS - 1):
                step.graph.replay()
            ids = step.out[: len(chunks), :TOKENS].cpu().numpy()
            t2 = time.perf_counter()
            _add(self.stats, batches=1, chunks=len(chunks), encoder_s=t1 - t0, decoder_s=t2 - t1, model_s=t2 - t0)
        assert not (ids == gb.EOT).any()
        return [[Segment(id=0, start=0.0, end=round(len(c) / SR, 3), text=" speech", avg_logprob=-0.1,
                         no_speech_prob=0.0)] for c in chunks]

    def close(self) -> None:
        self._steps.clear()


def _add(stats: dict, **amounts: float) -> None:
    for k, v in amounts.items():
        stats[k] = stats.get(k, 0) + v
    if STATS_FILE:  # the server is a subprocess: the run reads its account from here
        Path(STATS_FILE).write_text(json.dumps(stats))


def timed_torch_backend(model_dir: str):
    """The real torch backend on CUDA, its primitives timed (synchronised) into ``stats``."""
    import torch

    from whisper_server.backends.torch_backend import TorchBackend

    backend = TorchBackend.from_model_dir(model_dir, device=DEVICE, max_batch=BATCH, name="base")
    backend.stats = {"batches": 0, "chunks": 0, "encoder_s": 0.0, "decoder_s": 0.0, "alignment_s": 0.0,
                     "model_s": 0.0}
    for name, key in (("encode", "encoder_s"), ("decode", "decoder_s"), ("align", "alignment_s")):
        real = getattr(backend, name)

        def timed(*args, real=real, key=key):
            t = time.perf_counter()
            out = real(*args)
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            _add(backend.stats, **{key: time.perf_counter() - t})
            return out

        setattr(backend, name, timed)
    real_chunks = backend.transcribe_chunks

    def chunks(chunks, options):
        t = time.perf_counter()
        out = real_chunks(chunks, options)
        _add(backend.stats, batches=1, chunks=len(chunks), model_s=time.perf_counter() - t)
        return out

    backend.transcribe_chunks = chunks
    return backend


def _settings(**changes):
    from dataclasses import replace

    from whisper_server.settings import Settings

    base = Settings.from_env({})
    return replace(base, backend="torch", device=DEVICE, batch_size=BATCH, max_concurrency=64, max_queue=64, **changes)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from whisper_server.server import WhisperService, create_app

    factory = (lambda s: ForcedBackend()) if args.model == "forced" else (lambda s: timed_torch_backend(args.model_dir))
    service = WhisperService(_settings(), backend_factory=factory)
    uvicorn.run(create_app(service), host="127.0.0.1", port=args.port, log_level="warning", timeout_keep_alive=75)


def front_end(path: Path, device: str | None) -> tuple[float, int]:
    from whisper_server import audio, pipeline

    t = time.perf_counter()
    chunks = list(pipeline.vad_chunks(audio.iter_blocks(path), device))
    return time.perf_counter() - t, len(chunks)


def vad_alone(pcm: np.ndarray, device: str | None, fused: bool = True) -> float:
    """Seconds for the VAD alone over ``pcm``, fed in the pipeline's 240 s pieces."""
    from whisper_server import pipeline, vad

    net = vad.SileroVad(device=device)
    if not fused:  # the LSTM one step at a time: the VAD before VadStream (2026-12-01)
        net._run_lstm = net._lstm_steps
    stream = vad.VadStream(net)
    stream.feed(pcm[: 30 * SR])  # warm-up (cuDNN plans, allocator)
    stream = vad.VadStream(net)
    t = time.perf_counter()
    for at in range(0, len(pcm), pipeline.WINDOW_SAMPLES):
        stream.feed(pcm[at : at + pipeline.WINDOW_SAMPLES])
    stream.flush()
    return time.perf_counter() - t


def _post(client, path: Path, attrs: str = "formats=json&language=en&beam_size=1") -> dict:
    t = time.perf_counter()
    r = client.post("http://127.0.0.1:%d/invocations" % PORT, content=path.read_bytes(),
                    headers={"X-Amzn-SageMaker-Custom-Attributes": attrs}, timeout=3600)
    return {"status": r.status_code, "wall_s": time.perf_counter() - t,
            "body": r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text[:300]}


PORT = 8093


def _cores(spec: str) -> set[int]:
    return {int(c) for part in spec.split(",") for c in
            (range(int(part.split("-")[0]), int(part.split("-")[1]) + 1) if "-" in part else [part])}


def _stats(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _delta(after: dict, before: dict) -> dict:
    return {k: round(v - before.get(k, 0), 3) for k, v in after.items()}


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _peak_gb() -> float | None:
    """Peak GPU memory since the last call (None on the CPU)."""
    import torch

    if DEVICE != "cuda":
        return None
    peak = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    torch.cuda.reset_peak_memory_stats()
    return peak


def run(args: argparse.Namespace) -> None:
    import httpx
    import torch

    from whisper_contract import Transcript, render
    from whisper_server import audio, pipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    forced = args.model == "forced"
    result: dict = {"gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (smoke test)", "cpu_cores": args.cores, "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d"), "batch": BATCH,
                    "model": "large-v3 (random bf16 weights)" if forced else "base (real weights, bf16)",
                    "tokens": TOKENS if forced else "as decoded", "records": []}
    records = result["records"]

    def record(**r) -> None:
        records.append({"model": "large-v3" if forced else "base", "cpu_cores": len(cores), **r})
        print(json.dumps(records[-1]), flush=True)

    t = time.perf_counter()
    big, small, big_s, small_s = make_files(Path("/tmp/e2e_audio"), args.small)
    result["make_files_s"] = round(time.perf_counter() - t, 1)
    print("files ready", result["make_files_s"], flush=True)
    cores = _cores(args.cores)

    # --- the front end alone, pinned to the server's cores ------------------------------
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    if forced:
        pcm = audio.decode_all(big)
        for device, fused, name in ((None, False, "numpy"), ("cuda", False, "cuda-steps (before)"),
                                    ("cuda", True, "cuda-fused-lstm (VadStream)")):
            wall = vad_alone(pcm, device, fused)
            record(mode="front-end", impl="ours", variant=f"vad alone, {name}", audio_s=big_s, wall_s=round(wall, 3),
                   rtfx=round(big_s / wall, 1))
        del pcm
    t = time.perf_counter()
    for _ in audio.iter_blocks(big):
        pass
    dec = time.perf_counter() - t
    record(mode="front-end", impl="pyav", variant="decode+resample only, 1 file", audio_s=big_s,
           wall_s=round(dec, 2), rtfx=round(big_s / dec, 1))
    front_end(small[0], DEVICE)  # warm-up
    wall, n = front_end(big, DEVICE)
    record(mode="front-end", impl="ours", variant="decode+VAD(cuda)+chunking, 1 file", audio_s=big_s,
           wall_s=round(wall, 2), rtfx=round(big_s / wall, 1), chunks=n)
    t = time.perf_counter()
    with ThreadPoolExecutor(len(cores)) as pool:
        counts = list(pool.map(lambda p: front_end(p, DEVICE)[1], small))
    wall = time.perf_counter() - t
    record(mode="front-end", impl="ours", variant=f"decode+VAD(cuda)+chunking, 64 files on {len(cores)} threads",
           audio_s=round(small_s, 1), wall_s=round(wall, 2), rtfx=round(small_s / wall, 1), chunks=sum(counts))
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))

    # --- model only, on the very chunks the VAD cut ---------------------------------------
    from whisper_server.decoding import DecodeOptions

    options = DecodeOptions(language="en", beam_size=1)
    backend = ForcedBackend() if forced else timed_torch_backend(args.model_dir)
    for name, files, seconds in (("1 file of 1 h", [big], big_s), ("64 files of 1-5 min", small, small_s)):
        chunks = [c.audio for p in files for c in pipeline.vad_chunks(audio.iter_blocks(p), DEVICE)]
        backend.transcribe_chunks(chunks[:BATCH], options)  # warm-up
        _sync()
        t = time.perf_counter()
        for i in range(0, len(chunks), BATCH):
            backend.transcribe_chunks(chunks[i : i + BATCH], options)
        _sync()
        wall = time.perf_counter() - t
        record(mode="model-only", impl="ours", variant=("forced-100, " if forced else "") + name, batch=BATCH,
               tokens=TOKENS if forced else None, audio_s=round(seconds, 1),
               speech_s=round(sum(len(c) for c in chunks) / SR, 1), chunks=len(chunks), wall_s=round(wall, 2),
               rtfx=round(seconds / wall, 1), peak_gb=_peak_gb())
    backend.close()
    del backend
    if DEVICE == "cuda":
        torch.cuda.empty_cache()  # the server process needs the card's memory

    # --- end to end through the real server, pinned to the cores -------------------------
    stats_path = Path("/tmp/e2e_stats.json")
    stats_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "E2E_STATS": str(stats_path)}
    cmd = ["taskset", "-c", args.cores, sys.executable, __file__, "serve", "--port", str(PORT), "--model", args.model]
    if args.model_dir:
        cmd += ["--model-dir", args.model_dir]
    server = subprocess.Popen(cmd, env=env)
    try:
        with httpx.Client() as client:
            deadline = time.time() + 300
            while time.time() < deadline:
                try:
                    if client.get(f"http://127.0.0.1:{PORT}/ping", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            _post(client, small[0])  # warm-up
            if not forced:  # accuracy first: the shipped clips through the GPU server
                result["accuracy"] = accuracy(client, Path(args.reference))
                print(json.dumps(result["accuracy"]["summary"]), flush=True)
            before = _stats(stats_path)
            r = _post(client, big)
            ok = r["status"] == 200
            model = _delta(_stats(stats_path), before)
            timings = r["body"].get("timings") if ok and isinstance(r["body"], dict) else None
            render_s = None
            if ok:
                t = time.perf_counter()
                render(Transcript.from_dict(r["body"]), "json")
                render_s = round(time.perf_counter() - t, 3)
            record(mode="end-to-end", impl="server", variant="1 file of 1 h", batch=BATCH, audio_s=big_s,
                   wall_s=round(r["wall_s"], 2), rtfx=round(big_s / r["wall_s"], 1), status=r["status"],
                   breakdown={"server_processing_s": timings and timings["processing_seconds"],
                              "request_waiting_on_model_s": timings and timings["decode_seconds"],
                              "model_thread": model, "render_json_s": render_s,
                              "http_and_spool_s": timings and round(r["wall_s"] - timings["processing_seconds"], 2)},
                   error=None if ok else r["body"])
        before = _stats(stats_path)
        t = time.perf_counter()
        with httpx.Client(limits=httpx.Limits(max_connections=64)) as client, ThreadPoolExecutor(64) as pool:
            rs = list(pool.map(lambda p: _post(client, p), small))
        wall = time.perf_counter() - t
        model = _delta(_stats(stats_path), before)
        statuses = [r["status"] for r in rs]
        with httpx.Client() as client:
            ping = client.get(f"http://127.0.0.1:{PORT}/ping", timeout=5).json()
        record(mode="end-to-end", impl="server", variant="64 concurrent files of 1-5 min", batch=BATCH,
               audio_s=round(small_s, 1), wall_s=round(wall, 2), rtfx=round(small_s / wall, 1),
               ok=statuses.count(200), statuses=sorted(set(statuses)),
               latency_s_median=round(statistics.median(r["wall_s"] for r in rs), 1),
               latency_s_max=round(max(r["wall_s"] for r in rs), 1),
               breakdown={"model_thread": model, "ping": ping,
                          "mean_chunks_per_batch": round(model.get("chunks", 0) / max(model.get("batches", 1), 1), 1)})
    finally:
        server.terminate()
        server.wait(60)
    (out / f"e2e_gpu_{args.model}.json").write_text(json.dumps(result, indent=1))


def accuracy(client, reference: Path) -> dict:
    """The shipped clips through the GPU server (language detected), against the CPU path's
    transcripts of the same clips and against the references."""
    from whisper_eval.wer import wer

    ref = json.loads(reference.read_text())
    rows = {}
    for name, cpu in ref["clips"].items():
        r = _post(client, AUDIO / name, attrs="formats=json")
        body = r["body"] if r["status"] == 200 else {"text": "", "language": None}
        rows[name] = {"gpu_text": body["text"], "gpu_language": body["language"], "cpu_language": cpu["language"],
                      "wer_gpu_vs_cpu": round(wer(cpu["text"], body["text"]), 4),
                      "wer_gpu_vs_reference": round(wer(cpu["reference"], body["text"]), 4),
                      "wer_cpu_vs_reference": round(wer(cpu["reference"], cpu["text"]), 4)}
    mean = lambda key: round(statistics.mean(r[key] for r in rows.values()), 4)  # noqa: E731
    return {"clips": rows, "summary": {k: mean(k) for k in ("wer_gpu_vs_cpu", "wer_gpu_vs_reference",
                                                            "wer_cpu_vs_reference")}}


def _decode_only(path: Path) -> int:
    from whisper_server import audio

    return sum(len(b) for b in audio.iter_blocks(path))


def _front_end_cpu(path: Path) -> int:
    return front_end(path, None)[1]


def frontend_scaling(args: argparse.Namespace) -> None:
    """Where the front end's time goes with many files on the server's cores: decode alone
    and decode + VAD, on 1 and on N threads, and on N processes (no shared GIL)."""
    from concurrent.futures import ProcessPoolExecutor

    _, small, _, _ = make_files(Path("/tmp/e2e_audio"))
    files = small[:16]
    seconds = sum(_decode_only(p) for p in files) / SR
    n = len(_cores(args.cores))
    os.sched_setaffinity(0, _cores(args.cores))
    rows = []
    for what, fn in (("decode+resample", _decode_only), ("decode+VAD(numpy)+chunking", _front_end_cpu),
                     ("decode+VAD(cuda)+chunking", lambda p: front_end(p, "cuda")[1])):
        for pool_kind, workers in (("threads", 1), ("threads", n), ("processes", n)):
            if pool_kind == "processes" and what.endswith("(cuda)+chunking"):
                continue  # one CUDA context per process: not what the server does
            Pool = ThreadPoolExecutor if pool_kind == "threads" else ProcessPoolExecutor
            with Pool(workers) as pool:
                list(pool.map(fn, files[:2]))  # warm-up
                t = time.perf_counter()
                list(pool.map(fn, files))
                wall = time.perf_counter() - t
            rows.append({"mode": "front-end", "variant": f"{what}, {workers} {pool_kind}", "audio_s": round(seconds, 1),
                         "wall_s": round(wall, 2), "rtfx": round(seconds / wall, 1), "cpu_cores": n})
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "frontend_scaling.json").write_text(json.dumps(rows, indent=1))


def cpu_reference(args: argparse.Namespace) -> None:
    """The CPU path's transcripts of the shipped clips (faster-whisper base on the CPU, the
    server's default), which the GPU run is scored against."""
    from whisper_contract import RequestOptions
    from whisper_eval.clips import load_clips
    from whisper_server import pipeline
    from whisper_server.backends import load_backend
    from whisper_server.bundled import bundled_model_dir
    from whisper_server.settings import Settings

    settings = Settings(model_dir=str(bundled_model_dir("base")), device="cpu", model_name="base")
    backend = load_backend(settings)
    clips = {}
    for clip in load_clips():
        t = pipeline.transcribe_file(clip.path, RequestOptions(), backend, settings)
        clips[clip.path.name] = {"text": t.text, "language": t.language, "reference": clip.reference}
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "backend": backend.info.backend,
                                          "device": "cpu", "model": "base", "clips": clips},
                                         indent=1, ensure_ascii=False))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--cores", default="0-3")
    r.add_argument("--model", choices=("forced", "base"), default="forced")
    r.add_argument("--model-dir", default="")
    r.add_argument("--small", action="store_true", help="2 minutes and 4 files: a smoke test")
    r.add_argument("--reference", default=str(REPO / "benchmarks" / "results" / "base_cpu_reference.json"))
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=PORT)
    s.add_argument("--model", choices=("forced", "base"), default="forced")
    s.add_argument("--model-dir", default="")
    f = sub.add_parser("frontend-scaling")
    f.add_argument("--out", required=True)
    f.add_argument("--cores", default="0-3")
    c = sub.add_parser("cpu-reference")
    c.add_argument("--out", required=True)
    args = ap.parse_args()
    {"run": run, "serve": serve, "cpu-reference": cpu_reference, "frontend-scaling": frontend_scaling}[args.cmd](args)


if __name__ == "__main__":
    main()
