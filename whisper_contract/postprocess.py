"""What every transcript goes through once decoding is done, in the container, while word
timings still exist: per-segment confidence, redaction, caption cues, then the word timings
dropped unless they were asked for. One function, so the HTTP server, the DLC handler and
any other caller of the pipeline produce the same document."""

from __future__ import annotations

from dataclasses import replace

from whisper_contract import captions, redact
from whisper_contract.keys import UNREDACTED_VARIANT
from whisper_contract.options import RequestOptions
from whisper_contract.result import Transcript


def _with_captions(t: Transcript, options: RequestOptions) -> Transcript:
    return replace(t, captions=captions.build(t.segments, options.caption_rules))


def finish(t: Transcript, options: RequestOptions) -> Transcript:
    t = replace(t, segments=tuple(captions.with_confidence(s, options.confidence_threshold) for s in t.segments))
    out = t
    if options.redact == "pii":
        out = redact.redact(t, options.pii_types)
        if options.redact_output == "both":
            out = replace(out, unredacted=_with_captions(t, options))
    out = _with_captions(out, options)
    return out if options.word_timestamps else out.without_words()


def copies(t: Transcript) -> dict[str, Transcript]:
    """The documents to write for one transcript: ``""`` (the transcript itself, redacted when
    redaction was on) and, with redact_output=both, ``"unredacted"``; keys.output_keys names
    their files."""
    out = {"": replace(t, unredacted=None)}
    if t.unredacted is not None:
        out[UNREDACTED_VARIANT] = t.unredacted
    return out
