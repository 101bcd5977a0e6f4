"""End-to-end GPU benchmark (issue 15): audio through the real server, next to model-only.

Runs on the device machine (no network; PyAV, starlette and uvicorn carried as wheels):

  python benchmarks/e2e_gpu.py run --out $OUT [--cores 0-3]

What it measures, all in one run, on the same audio:
- files: real speech (the shipped English clips, laid end to end with short pauses) as MP3:
  one 1-hour file and 64 files of 1-5 minutes;
- front end alone (PyAV decode + resample + VAD + chunking, the pipeline's own generators)
  on the server's cores, with the VAD in NumPy and on the GPU;
- model only: the very chunks the VAD cut from the 1-hour file, through the benchmark
  backend at the server's batch size;
- end to end: the real server (HTTP, spooling, decode, VAD, batching, JSON) pinned to
  ``--cores`` (4 cores stand in for an ml.g5.xlarge), the client on the other cores.

The benchmark backend is large-v3's shape with random bf16 weights that decodes exactly 100
tokens per chunk (end of text suppressed, as benchmarks/gpu_bench.py's model-only figures),
so the compute per chunk matches the model-only benchmark; transcripts are meaningless
(real-weight accuracy on the GPU is gpu_bench.py's check). Results: $OUT/e2e_gpu.json.
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
BATCH = 32


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


def make_files(folder: Path) -> tuple[Path, list[Path], float, float]:
    folder.mkdir(parents=True, exist_ok=True)
    speech = _speech()
    rng = np.random.default_rng(0)
    hour = np.resize(speech, 3600 * SR)
    big = folder / "hour.mp3"
    _mp3(hour, big)
    small, total = [], 0.0
    for i in range(64):
        seconds = float(rng.uniform(60, 300))
        start = int(rng.integers(0, len(speech)))
        pcm = np.roll(np.resize(speech, int(seconds * SR) + len(speech)), -start)[: int(seconds * SR)]
        path = folder / f"f{i:02d}.mp3"
        _mp3(pcm, path)
        small.append(path)
        total += seconds
    return big, small, 3600.0, total


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
        self.info = ModelInfo(model=f"{name}-random", backend="torch-forced", version=torch.__version__,
                              device="cuda", compute_type="bfloat16")
        self._steps: dict[int, tuple] = {}
        self._lock = threading.Lock()
        self.model_seconds = 0.0

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
            b = len(chunks)
            state, step = self._step(b)
            host = np.zeros((b, gb.CHUNK), dtype=np.float32)
            for i, c in enumerate(chunks):
                host[i, : len(c)] = c
            audio = torch.from_numpy(host).to("cuda")
            lengths = torch.tensor([len(c) for c in chunks], device="cuda")
            enc = self.model.encoder(self.model.features(audio, lengths))
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
            ids = step.out[:, :TOKENS].cpu().numpy()
            self.model_seconds += time.perf_counter() - t0
        assert not (ids == gb.EOT).any()
        return [[Segment(id=0, start=0.0, end=round(len(c) / SR, 3), text=" speech", avg_logprob=-0.1,
                         no_speech_prob=0.0)] for c in chunks]

    def close(self) -> None:
        self._steps.clear()


def _settings(**changes):
    from dataclasses import replace

    from whisper_server.settings import Settings

    base = Settings.from_env({})
    return replace(base, backend="torch", device="cuda", batch_size=BATCH, max_queue=64, **changes)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from whisper_server.server import WhisperService, create_app

    service = WhisperService(_settings(), backend_factory=lambda s: ForcedBackend())
    uvicorn.run(create_app(service), host="127.0.0.1", port=args.port, log_level="warning", timeout_keep_alive=75)


def front_end(path: Path, device: str | None) -> tuple[float, int]:
    from whisper_server import audio, pipeline

    t = time.perf_counter()
    chunks = list(pipeline.vad_chunks(audio.iter_blocks(path), device))
    return time.perf_counter() - t, len(chunks)


def _post(client, path: Path) -> dict:
    t = time.perf_counter()
    r = client.post("http://127.0.0.1:%d/invocations" % PORT, content=path.read_bytes(),
                    headers={"X-Amzn-SageMaker-Custom-Attributes": "formats=json&language=en"}, timeout=3600)
    return {"status": r.status_code, "wall_s": time.perf_counter() - t,
            "body": r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text[:300]}


PORT = 8093


def run(args: argparse.Namespace) -> None:
    import httpx
    import torch

    from whisper_server import audio, pipeline

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"gpu": torch.cuda.get_device_name(0), "cpu_cores": args.cores, "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d"), "model": "large-v3 (random bf16 weights)", "tokens": TOKENS,
                    "batch": BATCH, "records": []}
    t = time.perf_counter()
    big, small, big_s, small_s = make_files(Path("/tmp/e2e_audio"))
    result["make_files_s"] = round(time.perf_counter() - t, 1)
    print("files ready", result["make_files_s"], flush=True)

    # Front end alone, pinned to the server's cores: NumPy VAD and GPU VAD.
    cores = {int(c) for part in args.cores.split(",") for c in
             (range(int(part.split("-")[0]), int(part.split("-")[1]) + 1) if "-" in part else [part])}
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    for device in (None, "cuda"):
        front_end(small[0], device)  # warm-up
        wall, n = front_end(big, device)
        result["records"].append({"mode": "front-end", "impl": "ours", "variant": f"vad-{device or 'numpy'}",
                                  "audio_s": big_s, "wall_s": round(wall, 2), "rtfx": round(big_s / wall, 1),
                                  "chunks": n, "cpu_cores": len(cores)})
        print(json.dumps(result["records"][-1]), flush=True)
    # Decode alone (no VAD), to split the front end's time.
    t = time.perf_counter()
    for _ in audio.iter_blocks(big):
        pass
    dec = time.perf_counter() - t
    result["records"].append({"mode": "front-end", "impl": "pyav", "variant": "decode+resample only",
                              "audio_s": big_s, "wall_s": round(dec, 2), "rtfx": round(big_s / dec, 1)})
    print(json.dumps(result["records"][-1]), flush=True)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))

    # Model only, on the very chunks the VAD cut from the hour.
    chunks = [c.audio for c in pipeline.vad_chunks(audio.iter_blocks(big), "cuda")]
    backend = ForcedBackend()
    backend.transcribe_chunks(chunks[:BATCH], None)  # warm-up (graph capture)
    backend.transcribe_chunks(chunks[-(len(chunks) % BATCH or BATCH):], None)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, len(chunks), BATCH):
        backend.transcribe_chunks(chunks[i : i + BATCH], None)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    speech_s = sum(len(c) for c in chunks) / SR
    result["records"].append({"mode": "model-only", "impl": "ours", "variant": "forced-100", "batch": BATCH,
                              "audio_s": big_s, "speech_s": round(speech_s, 1), "chunks": len(chunks),
                              "wall_s": round(wall, 2), "rtfx": round(big_s / wall, 1),
                              "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)})
    print(json.dumps(result["records"][-1]), flush=True)
    backend.close()
    del backend
    torch.cuda.empty_cache()

    # End to end through the real server, pinned to the cores.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(["taskset", "-c", args.cores, sys.executable, __file__, "serve", "--port", str(PORT)],
                              env=env)
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
            _post(client, small[0])  # warm-up: graph capture for this batch size
            r = _post(client, big)
            ok = r["status"] == 200
            timings = r["body"].get("timings") if ok and isinstance(r["body"], dict) else None
            result["records"].append({"mode": "end-to-end", "impl": "server", "variant": "1 file of 1 h",
                                      "batch": BATCH, "audio_s": big_s, "wall_s": round(r["wall_s"], 2),
                                      "rtfx": round(big_s / r["wall_s"], 1), "status": r["status"],
                                      "server_timings": timings, "cpu_cores": len(cores),
                                      "error": None if ok else r["body"]})
            print(json.dumps(result["records"][-1]), flush=True)
        t = time.perf_counter()
        with httpx.Client(limits=httpx.Limits(max_connections=64)) as client, ThreadPoolExecutor(64) as pool:
            rs = list(pool.map(lambda p: _post(client, p), small))
        wall = time.perf_counter() - t
        statuses = [r["status"] for r in rs]
        result["records"].append({"mode": "end-to-end", "impl": "server", "variant": "64 concurrent files of 1-5 min",
                                  "batch": BATCH, "audio_s": round(small_s, 1), "wall_s": round(wall, 2),
                                  "rtfx": round(small_s / wall, 1), "ok": statuses.count(200),
                                  "statuses": sorted(set(statuses)), "cpu_cores": len(cores),
                                  "latency_s_median": round(statistics.median(r["wall_s"] for r in rs), 1),
                                  "latency_s_max": round(max(r["wall_s"] for r in rs), 1)})
        print(json.dumps(result["records"][-1]), flush=True)
    finally:
        server.terminate()
        server.wait(60)
    (out / "e2e_gpu.json").write_text(json.dumps(result, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--cores", default="0-3")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=PORT)
    args = ap.parse_args()
    {"run": run, "serve": serve}[args.cmd](args)


if __name__ == "__main__":
    main()
