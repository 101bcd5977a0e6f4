"""Issue 12 item 8 over HTTP: initial_prompt and hotwords at their documented limits (600
characters each, whisper_contract.options.MAX_PROMPT_CHARS) are served, not a 500. The
decoding module keeps what Whisper keeps of a long prompt (223 tokens: n_text_ctx // 2 - 1)."""

from __future__ import annotations

from whisper_contract import Transcript
from whisper_contract.options import MAX_PROMPT_CHARS
from whisper_eval.wer import wer


def test_longest_allowed_prompt_and_hotwords_are_served(tiny_server, english_clips):
    clip = min(english_clips, key=lambda c: c.duration)
    prompt = ("Notes from the printing history lecture, with names and dates. " * 20)[:MAX_PROMPT_CHARS]
    hotwords = ("Caxton Gutenberg Aldus Manutius Plantin Elzevir " * 20)[:MAX_PROMPT_CHARS]
    response = tiny_server.post(clip.path.read_bytes(), params={"initial_prompt": prompt, "hotwords": hotwords})
    assert response.status_code == 200, response.text
    t = Transcript.from_json(response.text)
    assert wer(clip.reference, t.text) <= 0.5, t.text
