"""Speaker diarization: DER on two- and three-speaker conversations built from different
speakers of the shared corpus (whisper_eval.conversation), and the CPU time diarization
adds per audio hour.

    .venv/bin/python benchmarks/diarize_bench.py [--model tiny.en] [--threshold 0.35] [--collar 0.25]

Each conversation is transcribed through the real pipeline twice, without and with
speakers=auto (and with speakers=N, the true count); the CPU seconds of the second minus the
first are diarization's cost. Prints one line per conversation and mode, then the totals.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from whisper_contract import RequestOptions
from whisper_eval.clips import SHARED, load_clips
from whisper_eval.conversation import SAMPLE_RATE, Conversation, build
from whisper_eval.der import der, turns_of
from whisper_server import audio, diarize, pipeline
from whisper_server.backends import load_backend
from whisper_server.bundled import bundled_model_dir
from whisper_server.settings import Settings

# Speaker -> clips of the shared corpus (file-name parts); each speaker's clips are one voice
# (LibriSpeech speaker id, LJ Speech's one reader, one earnings-call speaker, one LibriVox reader).
SPEAKERS = {
    "lj": ["LJ001-0001", "LJ001-0002", "LJ001-0003", "LJ001-0006", "LJ001-0007", "LJ002-0020"],
    "ls1272": ["1272-141231-0002", "1272-128104-0004"],
    "earn": ["earnings22"],
    "ls1221": ["1221-135766-0001", "1221-135766-0002.flac"],
    "sonnet": ["sonnet-001"],
    "jfk": ["jfk_inaugural"],
    "ls2412": ["2412-153948-0000"],
}
CONVERSATIONS = [("lj", "ls1272"), ("earn", "sonnet"), ("ls1221", "ls2412"),
                 ("lj", "ls1272", "earn"), ("sonnet", "ls1221", "jfk")]


def conversation(names: tuple[str, ...]) -> Conversation:
    clips = load_clips(SHARED)
    voices = {n: [audio.decode_all(next(c.path for c in clips if part in c.name)) for part in SPEAKERS[n]]
              for n in names}
    return build(voices)


def write_flac(samples: np.ndarray, path: Path) -> None:
    with av.open(str(path), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--threshold", type=float, default=diarize.AUTO_THRESHOLD)
    parser.add_argument("--collar", type=float, default=0.25)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    diarize.AUTO_THRESHOLD = args.threshold
    settings = Settings(model_dir=str(bundled_model_dir(args.model)), device="cpu", batch_size=4, cpu_threads=2)
    backend = load_backend(settings)
    rows, audio_s, extra_cpu = [], 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for names in CONVERSATIONS:
            conv = conversation(names)
            path = Path(tmp) / ("+".join(names) + ".flac")
            write_flac(conv.audio, path)
            t0 = cpu_s()
            pipeline.transcribe_file(path, RequestOptions(), backend, settings)
            plain = cpu_s() - t0
            for mode in ("auto", len(names)):
                t0 = cpu_s()
                t = pipeline.transcribe_file(path, RequestOptions(speakers=mode, word_timestamps=True), backend, settings)
                cost = cpu_s() - t0 - plain
                result = der(conv.turns, turns_of(t.segments), collar=args.collar)
                found = len({s.speaker for s in t.segments})
                row = {"speakers": "+".join(names), "mode": str(mode), "audio_s": round(conv.duration, 1),
                       "true": len(names), "found": found, "der": round(result.der, 4),
                       "missed_s": round(result.missed, 2), "false_alarm_s": round(result.false_alarm, 2),
                       "confusion_s": round(result.confusion, 2), "diarize_cpu_s": round(cost, 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if mode == "auto":
                    audio_s += conv.duration
                    extra_cpu += cost
    for mode in ("auto", "N"):
        picked = [r for r in rows if (r["mode"] == "auto") == (mode == "auto")]
        for n in (2, 3):
            sub = [r for r in picked if r["true"] == n]
            ref = sum(r["audio_s"] for r in sub)
            mean = sum(r["der"] * r["audio_s"] for r in sub) / ref
            print(f"speakers={mode} {n} speakers: DER {mean:.3f} (duration-weighted, {len(sub)} conversations, "
                  f"{ref:.0f} s); speaker count right in {sum(r['found'] == r['true'] for r in sub)}/{len(sub)}")
    print(f"diarization CPU: {extra_cpu:.1f} s for {audio_s:.0f} s of audio = "
          f"{extra_cpu / audio_s * 3600:.0f} CPU s per audio hour")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
