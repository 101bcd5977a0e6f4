"""The decoding policy (whisper_server.decoding), driven by a fake backend that returns scripted
tokens and log-probabilities: every backend reaches these decisions through the same code, so
"same clip, same decision on every backend" is tested here once."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from whisper_contract import ContractError, ErrorCode, ModelInfo
from whisper_server.decoding import (N_TEXT_CTX, TEMPERATURES, Attempt, Backend, Capabilities, DecodeOptions, DecodingTask,
                                     Prompt, WhisperTokenizer, build_prompt, compression_ratio, cut_at_timestamps,
                                     dtw, is_silence, loops, needs_fallback, transcribe_chunks)


@pytest.fixture(scope="module")
def tok(tiny_en_dir) -> WhisperTokenizer:
    return WhisperTokenizer(tiny_en_dir / "tokenizer.json")


class Scripted:
    """A backend whose ``decode`` answers from a script: chunk index -> one Attempt per
    temperature (the last one repeats). Records every call."""

    def __init__(self, tok: WhisperTokenizer, script: dict[int, list[Attempt]], *, timestamps: bool = True) -> None:
        self.tokenizer = tok
        self.info = ModelInfo(model="scripted", backend="scripted", version="0")
        self.capabilities = Capabilities(multilingual=False, word_timestamps=False, max_beam=4, timestamps=timestamps)
        self.script = script
        self.calls: list[tuple[tuple[int, ...], float, int, Prompt]] = []

    def detect_language(self, audio):
        return "en", 1.0

    def encode(self, chunks):
        return [int(c[0]) for c in chunks]  # each test chunk carries its script index in sample 0

    def decode(self, encoded, rows, prompt, temperature, beam_size):
        self.calls.append((tuple(encoded[r] for r in rows), temperature, beam_size, prompt))
        n = TEMPERATURES.index(temperature)
        return [self.script[encoded[r]][min(n, len(self.script[encoded[r]]) - 1)] for r in rows]

    def align(self, *a):
        raise AssertionError("not asked for words")

    def healthy(self):
        return True

    def close(self):
        pass


def chunk(index: int, seconds: float = 10.0) -> np.ndarray:
    a = np.zeros(int(seconds * 16_000), np.float32)
    a[0] = index
    return a


def stamp(tok: WhisperTokenizer, seconds: float) -> int:
    return tok.specials.timestamp_begin + round(seconds / 0.02)


def said(tok: WhisperTokenizer, *pieces: tuple[float, str, float], logprob: float = -0.2,
         no_speech: float = 0.01) -> Attempt:
    tokens: list[int] = []
    for start, text, end in pieces:
        tokens += [stamp(tok, start), *tok.encode(text), stamp(tok, end)]
    return Attempt(tuple(tokens), logprob * (len(tokens) + 1), no_speech)


def test_compression_ratio_is_openai_zlib_ratio():
    text = "the cat sat on the mat " * 8
    raw = text.encode()
    assert compression_ratio(text) == len(raw) / len(zlib.compress(raw))
    assert compression_ratio("") == 0.0


@pytest.mark.parametrize("avg, ratio, no_speech, retry, silent", [
    (-0.2, 1.2, 0.1, False, False),   # fine
    (-0.2, 3.0, 0.1, True, False),    # repetitive
    (-1.5, 1.2, 0.1, True, False),    # unlikely
    (-1.5, 1.2, 0.9, False, True),    # unlikely but silence: skipped, not retried
    (-1.5, 3.0, 0.9, False, True),    # repetitive silence: openai skips it too
    (-0.2, 3.0, 0.9, True, False),    # likely text with a high no-speech prob is not silence
])
def test_fallback_rule_is_openais(avg, ratio, no_speech, retry, silent):
    """openai/whisper transcribe.py decode_with_fallback: (CR or logprob) and not silence."""
    assert needs_fallback(avg, ratio, no_speech) is retry
    assert is_silence(avg, no_speech) is silent


def test_temperature_fallback_retries_only_the_failing_chunk(tok):
    loop = said(tok, (0.0, " yes" * 40, 8.0))
    good = said(tok, (0.0, " Hello there.", 2.0))
    backend = Scripted(tok, {1: [loop, loop, good], 2: [good]})
    out = transcribe_chunks(backend, [chunk(1), chunk(2)], DecodeOptions(language="en", beam_size=5))
    assert [s.text for s in out[0]] == [" Hello there."] == [s.text for s in out[1]]
    # beams at T=0 (capped at the declared max_beam), one sample above; only chunk 1 retried
    assert [(c[0], c[1], c[2]) for c in backend.calls] == [((1, 2), 0.0, 4), ((1,), 0.2, 1), ((1,), 0.4, 1)]


def test_silence_is_skipped_without_fallback(tok):
    quiet = said(tok, (0.0, " Thank you.", 1.0), logprob=-1.4, no_speech=0.95)
    backend = Scripted(tok, {1: [quiet]})
    assert transcribe_chunks(backend, [chunk(1)], DecodeOptions(language="en")) == [[]]
    assert len(backend.calls) == 1


def test_a_window_that_loops_at_every_temperature_is_kept_and_flagged(tok, caplog):
    loop = said(tok, (0.0, " la" * 60, 9.0))
    backend = Scripted(tok, {1: [loop]})
    (segments,) = transcribe_chunks(backend, [chunk(1)], DecodeOptions(language="en"))
    assert len(backend.calls) == 6 and segments[0].text.count("la") == 60
    assert "repeats itself" in caplog.text


def test_short_loops_are_caught_where_zlib_is_not():
    assert compression_ratio(" the the the the the the the") < 2.4
    assert loops(" the the the the the the the")
    assert not loops(" No, no, no. I said no.")


def test_segments_are_cut_at_timestamp_pairs_and_a_closed_window_ends(tok):
    attempt = said(tok, (0.0, " One.", 1.5), (1.5, " Two.", 3.0))
    (segments,) = transcribe_chunks(Scripted(tok, {1: [attempt]}), [chunk(1, 3.0)], DecodeOptions(language="en"))
    assert [(s.id, s.start, s.end, s.text) for s in segments] == [(0, 0.0, 1.5, " One."), (1, 1.5, 3.0, " Two.")]


def test_a_window_closed_early_is_resumed_from_its_last_timestamp(tok):
    """openai's seek: the model closed a segment at 4 s and stopped; the rest is decoded next."""
    early = Attempt((stamp(tok, 0.0), *tok.encode(" First."), stamp(tok, 4.0), stamp(tok, 4.0)), -1.0, 0.01)
    rest = said(tok, (0.0, " Second.", 3.0))
    backend = Scripted(tok, {})
    pieces, resume = cut_at_timestamps(early.tokens, tok.specials.timestamp_begin, 10.0)
    assert resume == 4.0 and [p[2] for p in pieces][0][1:-1] == tok.encode(" First.")
    calls = []

    def decode(encoded, rows, prompt, temperature, beam_size):
        calls.append(len(encoded[0]))
        return [early if len(encoded[0]) == 160_000 else rest for _ in rows]

    backend.encode = lambda chunks: list(chunks)  # type: ignore[method-assign]
    backend.decode = decode  # type: ignore[method-assign]
    (segments,) = transcribe_chunks(backend, [chunk(1)], DecodeOptions(language="en"))
    assert [(s.start, s.end, s.text) for s in segments] == [(0.0, 4.0, " First."), (4.0, 7.0, " Second.")]
    assert calls == [160_000, 96_000]


def test_prompt_keeps_hotwords_then_the_end_of_the_prompt(tok):
    """Issue 12 item 8: 600 characters of each used to overflow the 448 positions."""
    long_prompt = " ".join(f"w{i}" for i in range(200))
    prompt = build_prompt(tok, language="en", task="transcribe", multilingual=False, timestamps=False,
                          initial_prompt=long_prompt, hotwords="Kubernetes SageMaker " * 28)
    context = prompt.tokens[1:prompt.sot_index]
    assert prompt.tokens[0] == tok.specials.sot_prev and len(context) == N_TEXT_CTX // 2 - 1
    assert prompt.context.startswith("Kubernetes SageMaker") and prompt.context.endswith("w199")
    assert prompt.tokens[prompt.sot_index:] == (tok.specials.sot, tok.specials.no_timestamps)
    assert N_TEXT_CTX - len(prompt.tokens) >= N_TEXT_CTX // 2 - 4  # about half stays for the output
    hot_only = build_prompt(tok, language="en", task="transcribe", multilingual=False, timestamps=True,
                            hotwords="x y " * 300)
    assert len(hot_only.tokens) - hot_only.sot_index == 1 and hot_only.sot_index == N_TEXT_CTX // 2


def test_previous_text_conditions_the_next_window_only_when_asked(tok):
    early = Attempt((stamp(tok, 0.0), *tok.encode(" First."), stamp(tok, 4.0), stamp(tok, 4.0)), -1.0, 0.01)
    rest = said(tok, (0.0, " Second.", 3.0))
    for condition in (False, True):
        backend = Scripted(tok, {})
        backend.encode = lambda chunks: list(chunks)  # type: ignore[method-assign]
        prompts = []

        def decode(encoded, rows, prompt, temperature, beam_size):
            prompts.append(prompt.context)
            return [early if len(encoded[0]) == 160_000 else rest for _ in rows]

        backend.decode = decode  # type: ignore[method-assign]
        transcribe_chunks(backend, [chunk(1)], DecodeOptions(language="en", initial_prompt="Meeting.",
                                                             condition_on_previous_text=condition))
        assert prompts == ["Meeting.", "Meeting. First." if condition else "Meeting."]


def test_words_are_refused_where_a_backend_declares_none(tok):
    with pytest.raises(ContractError) as info:
        DecodingTask(Scripted(tok, {}), DecodeOptions(language="en", word_timestamps=True))
    assert info.value.code is ErrorCode.BAD_OPTION


def test_dtw_follows_the_cheapest_monotonic_path():
    cost = np.array([[0, 5, 5, 5], [5, 0, 0, 5], [5, 5, 5, 0]], dtype=float)
    rows, cols = dtw(cost)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 1), (1, 2), (2, 3)]


def test_every_backend_uses_the_one_policy(tok):
    """No backend carries its own decode loop: they all inherit transcribe_chunks."""
    from whisper_server.backends.base import BackendBase
    from whisper_server.backends.faster_whisper_backend import FasterWhisperBackend
    from whisper_server.backends.triton_backend import TritonBackend

    classes = [FasterWhisperBackend, TritonBackend]
    try:
        from whisper_server.backends.torch_backend import TorchBackend
        classes.append(TorchBackend)
    except ImportError:  # torch is not in every test environment
        pass
    for cls in classes:
        assert cls.transcribe_chunks is BackendBase.transcribe_chunks
        for name in ("encode", "decode", "align", "detect_language", "healthy", "close"):
            assert callable(getattr(cls, name)), (cls, name)
    assert isinstance(Scripted(tok, {}), Backend)  # the fake satisfies the protocol too
