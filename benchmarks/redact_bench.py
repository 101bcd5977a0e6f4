"""What redaction, captions and confidence cost, and what they find (issue 17 part B), for
docs/benchmarks.md.

    python benchmarks/redact_bench.py [--hours 1] [--repeat 5]

1. The synthetic clip (tests/data/audio/synthetic) through the real pipeline with the bundled
   multilingual ``base`` on the CPU, redact=pii vs redaction off: wall time of each, the
   redacted text, and the spans found.
2. ``postprocess.finish`` alone (confidence + redaction + caption cues) on a transcript of
   ``--hours`` hours made by repeating that clip's real segments and words end to end: the
   post-processing cost per audio hour, with and without redaction (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

from whisper_contract import RequestOptions, Transcript
from whisper_contract.postprocess import finish

CLIP = Path(__file__).resolve().parent.parent / "tests/data/audio/synthetic/en_espeak_pii_phone_email.opus"


def tiled(t: Transcript, hours: float) -> Transcript:
    """``t``'s segments (with words) repeated end to end until ``hours`` of audio."""
    segments, offset = [], 0.0
    while offset < hours * 3600:
        for seg in t.segments:
            segments.append(seg.shifted(offset, new_id=len(segments)))
        offset += t.duration
    return replace(t, segments=tuple(segments), duration=offset, text="".join(s.text for s in segments).strip())


def best(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from whisper_server.backends import load_backend
    from whisper_server.bundled import bundled_model_dir
    from whisper_server.pipeline import transcribe_file
    from whisper_server.settings import Settings

    settings = Settings(model_dir=str(bundled_model_dir("base")), device="cpu", cpu_threads=2)
    backend = load_backend(settings)
    plain = RequestOptions(language="en", word_timestamps=True)
    pii = replace(plain, redact="pii")
    transcribe_file(CLIP, plain, backend, settings)  # warm-up
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for name, options in (("off", plain), ("redact=pii", pii)):
        t0 = time.perf_counter()
        t = transcribe_file(CLIP, options, backend, settings)
        print(f"pipeline {name}: {time.perf_counter() - t0:.2f} s for {t.duration:.1f} s of audio; text: {t.text}")
        if t.redaction:
            print("  spans:", [(s.type, s.start, s.end) for s in t.redaction.spans])

    # Undo nothing: the words of the unredacted transcript are the input of finish.
    raw = transcribe_file(CLIP, plain, backend, settings)
    hour = tiled(raw, args.hours)
    words = sum(len(s.words or ()) for s in hour.segments)
    for name, options in (("confidence + captions", plain), ("+ redact=pii", pii),
                          ("+ redact=pii, redact_output=both", replace(pii, redact_output="both"))):
        seconds = best(lambda: finish(hour, options), args.repeat)
        print(f"finish {name}: {seconds * 1000:.0f} ms for {hour.duration / 3600:.2f} h "
              f"({len(hour.segments)} segments, {words} words) = {seconds / (hour.duration / 3600) * 1000:.0f} ms "
              "per audio hour")
    spans = finish(hour, pii).redaction
    print(f"spans in the tiled hour: {len(spans.spans) if spans else 0} "
          f"(expected {2 * round(hour.duration / raw.duration)})")


if __name__ == "__main__":
    main()
