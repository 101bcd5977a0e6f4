"""Speaker diarization: DER on two- and three-speaker conversations built from different
speakers of the shared corpus (whisper_eval.conversation), and the CPU time diarization
adds per audio hour.

    .venv/bin/python benchmarks/diarize_bench.py [--model tiny.en] [--threshold 0.35] [--collar 0.25]

Each conversation is transcribed through the real pipeline with speakers=auto and with
speakers=N (the true count); diarization's own CPU seconds (the step after transcription:
reading the audio again, embedding, clustering, labelling) are timed around
``diarize.diarize``. Then one hour of speech (the conversations' audio repeated) is embedded
and clustered, for the cost per audio hour at full scale (clustering in groups past
MAX_ITEMS windows). Prints one line per conversation and mode, then the totals.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from whisper_contract import RequestOptions
from whisper_eval.clips import SHARED, load_clips
from whisper_eval.conversation import SAMPLE_RATE, Conversation, build
from whisper_eval.der import der, turns_of
from whisper_eval.encode import encode
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


def conversation(names: tuple[str, ...], gap_s: float = 0.6) -> Conversation:
    clips = load_clips(SHARED)
    voices = {n: [audio.decode_all(next(c.path for c in clips if part in c.name)) for part in SPEAKERS[n]]
              for n in names}
    return build(voices, gap_s=gap_s)


def cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


SPENT = [0.0]  # CPU seconds inside diarize.diarize


def _timed(fn):  # type: ignore[no-untyped-def]
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = cpu_s()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[0] += cpu_s() - t0
    return wrapper


def one_hour(convs: list[Conversation]) -> dict[str, float]:
    """Embedding and clustering of an hour of speech, streamed in 30 s blocks like a file."""
    speech = np.concatenate([c.audio for c in convs])
    hour = np.tile(speech, int(np.ceil(3600 * SAMPLE_RATE / len(speech))))[:3600 * SAMPLE_RATE]
    embedder = diarize.load_embedder()
    starts = diarize.window_starts([(0, len(hour))], embedder.window_samples)
    t0 = cpu_s()
    emb = diarize.embed_windows((hour[i:i + audio.BLOCK_SAMPLES] for i in range(0, len(hour), audio.BLOCK_SAMPLES)),
                                starts, embedder)
    t1 = cpu_s()
    diarize.cluster(emb, 1, 30, auto=True)
    t2 = cpu_s()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"windows": len(starts), "embed_cpu_s": round(t1 - t0, 1), "cluster_cpu_s": round(t2 - t1, 1),
            "peak_rss_mb": round(peak_mb)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--threshold", type=float, default=diarize.AUTO_THRESHOLD)
    parser.add_argument("--collar", type=float, default=0.25)
    parser.add_argument("--gap", type=float, default=0.6, help="seconds of silence between turns")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    diarize.AUTO_THRESHOLD = args.threshold
    diarize.diarize = _timed(diarize.diarize)  # type: ignore[method-assign]
    settings = Settings(model_dir=str(bundled_model_dir(args.model)), device="cpu", batch_size=4, cpu_threads=2)
    backend = load_backend(settings)
    rows, audio_s, spent, convs = [], 0.0, 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        for names in CONVERSATIONS:
            conv = conversation(names, args.gap)
            convs.append(conv)
            path = Path(tmp) / ("+".join(names) + ".flac")
            path.write_bytes(encode(conv.audio))
            for mode in ("auto", len(names)):
                SPENT[0] = 0.0
                t = pipeline.transcribe_file(path, RequestOptions(speakers=mode, word_timestamps=True), backend, settings)
                result = der(conv.turns, turns_of(t.segments), collar=args.collar)
                found = len({s.speaker for s in t.segments})
                row = {"speakers": "+".join(names), "mode": str(mode), "audio_s": round(conv.duration, 1),
                       "true": len(names), "found": found, "der": round(result.der, 4),
                       "missed_s": round(result.missed, 2), "false_alarm_s": round(result.false_alarm, 2),
                       "confusion_s": round(result.confusion, 2), "diarize_cpu_s": round(SPENT[0], 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if mode == "auto":
                    audio_s += conv.duration
                    spent += SPENT[0]
    for mode in ("auto", "N"):
        picked = [r for r in rows if (r["mode"] == "auto") == (mode == "auto")]
        for n in (2, 3):
            sub = [r for r in picked if r["true"] == n]
            ref = sum(r["audio_s"] for r in sub)
            mean = sum(r["der"] * r["audio_s"] for r in sub) / ref
            print(f"speakers={mode} {n} speakers: DER {mean:.3f} (duration-weighted, {len(sub)} conversations, "
                  f"{ref:.0f} s); speaker count right in {sum(r['found'] == r['true'] for r in sub)}/{len(sub)}")
    print(f"diarization CPU (speakers=auto): {spent:.1f} s for {audio_s:.0f} s of audio = "
          f"{spent / audio_s * 3600:.0f} CPU s per audio hour")
    hour = one_hour(convs)
    print(f"one hour of speech: {json.dumps(hour)}")
    if args.json:
        args.json.write_text(json.dumps({"conversations": rows, "one_hour": hour}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
