"""Redaction in the container's pipeline with the English-only tiny.en, which writes the
synthetic clip's number differently from base ("5 5 5 2 3 4 ..." as separate words; base,
through the whole local pipeline: tests/pipeline/test_redaction.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from whisper_contract import RequestOptions, render

CLIP = Path(__file__).resolve().parent.parent / "data/audio/synthetic/en_espeak_pii_phone_email.opus"
LEAKS = ("555", "5 5 5", "234", "5678", "6 7 8", "smith", "mail.com")


@pytest.mark.parametrize("query", ["language=en", "language=en&vad=false&beam_size=1"])
def test_tiny_en_transcript_of_the_spoken_number_and_address_is_redacted_in_every_format(tiny_en_dir, query):
    from whisper_server.backends import load_backend
    from whisper_server.pipeline import transcribe_file
    from whisper_server.settings import Settings

    settings = Settings(model_dir=str(tiny_en_dir), device="cpu", cpu_threads=2)
    backend = load_backend(settings)
    plain = transcribe_file(CLIP, RequestOptions.from_query(query), backend, settings)
    assert "5 5 5 2 3 4 5 6 7 8" in plain.text and "smith at mail.com" in plain.text.lower()  # what is hidden
    t = transcribe_file(CLIP, RequestOptions.from_query(query + "&redact=pii"), backend, settings)
    assert [s.type for s in t.redaction.spans] == ["phone", "email"]
    for fmt in ("json", "txt", "srt", "vtt"):
        body = render(t, fmt)
        assert "[PII:PHONE]" in body and "[PII:EMAIL]" in body, fmt
        assert not [leak for leak in LEAKS if leak in body.lower()], (fmt, body)
