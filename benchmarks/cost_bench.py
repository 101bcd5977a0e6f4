"""Two checks behind the cost model (issue 16), through the real server on the CPU:

1. metering: the same clips sent one at a time, then two at a time, to a server with
   ``WHISPER_MAX_CONCURRENCY=2``: the cost blocks' ``instance_seconds`` (the share) against
   ``compute_seconds`` (wall on a worker) and the elapsed time;
2. model size on the CPU: ``tiny.en`` (39 M parameters) against the multilingual ``base`` (74 M)
   on the same clips and threads, the measured slowdown against the parameter ratio the cost
   model's CPU row scales by.

    .venv/bin/python benchmarks/cost_bench.py [--out benchmarks/results/cost_<date>.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx

from whisper_contract import Transcript
from whisper_eval.clips import load_clips
from whisper_local.net import free_port
from whisper_server.bundled import bundled_model_dir

CLIPS = 4  # the longest English clips: enough audio per request to dwarf HTTP
PARAMS_M = {"tiny.en": 39, "base": 74}


def start(model: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "WHISPER_MODEL_DIR": str(bundled_model_dir(model)), "WHISPER_DEVICE": "cpu",
           "WHISPER_CPU_THREADS": "2", "WHISPER_MAX_CONCURRENCY": "2", "WHISPER_MODEL_NAME": model,
           "WHISPER_INSTANCE_TYPE": "ml.c5.4xlarge"}
    proc = subprocess.Popen([sys.executable, "-m", "whisper_server", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{model} server not ready:\n{log.read_text()}")


def post(url: str, body: bytes) -> dict[str, float]:
    r = httpx.post(f"{url}/invocations", content=body, params={"language": "en"}, timeout=600)
    r.raise_for_status()
    cost = Transcript.from_json(r.content).cost
    assert cost is not None
    return {"audio_s": cost.audio_seconds, "compute_s": cost.compute_seconds, "share_s": cost.instance_seconds}


def run(url: str, bodies: list[bytes], parallel: int) -> dict[str, float]:
    began = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        rows = list(pool.map(lambda b: post(url, b), bodies))
    elapsed = time.monotonic() - began
    audio = sum(r["audio_s"] for r in rows)
    return {"parallel": parallel, "requests": len(rows), "audio_s": round(audio, 2), "elapsed_s": round(elapsed, 2),
            "sum_compute_s": round(sum(r["compute_s"] for r in rows), 2),
            "sum_share_s": round(sum(r["share_s"] for r in rows), 2),
            "rtfx_by_share": round(audio / sum(r["share_s"] for r in rows), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(f"benchmarks/results/cost_{datetime.now(timezone.utc):%F}.json"))
    args = parser.parse_args()
    clips = sorted((c for c in load_clips() if c.language == "en"), key=lambda c: -c.duration)[:CLIPS]
    bodies = [c.path.read_bytes() for c in clips]
    result: dict[str, object] = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
                                 "machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()}",
                                 "clips": [c.name for c in clips], "runs": {}}
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in ("tiny.en", "base"):
            proc, url = start(model, Path(tmp) / f"{model}.log")
            try:
                post(url, bodies[-1])  # warm
                runs[model] = [run(url, bodies, 1), run(url, bodies + bodies, 2)]
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    result["runs"] = runs
    slowdown = runs["tiny.en"][0]["rtfx_by_share"] / runs["base"][0]["rtfx_by_share"]
    result["base_over_tiny"] = {"measured_slowdown": round(slowdown, 2),
                                "parameter_ratio": round(PARAMS_M["base"] / PARAMS_M["tiny.en"], 2)}
    result["load_end"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
