"""Small pieces of the server without a model: settings, negotiation, backend registry,
sentence splitting, chunk time mapping."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from whisper_contract import ContractError, RequestOptions, Segment, Word, env
from whisper_server.backends import REGISTRY, Backend, load_backend
from whisper_server.backends.base import SAMPLE_RATE
from whisper_server.backends.faster_whisper_backend import FasterWhisperBackend
from whisper_server.decoding import split_sentences
from whisper_server.negotiate import choose_format, parse_options
from whisper_server.pipeline import Chunk
from whisper_server.settings import Settings


def test_settings_defaults_and_env():
    s = Settings.from_env({})
    assert (s.model_dir, s.backend, s.device, s.port) == ("/opt/ml/model", "faster-whisper", "auto", 8080)
    s = Settings.from_env({env.MODEL_DIR: "/m/base", env.DEVICE: "CUDA", env.MAX_CONCURRENCY: "4",
                           env.PORT: "9000", env.REQUEST_TIMEOUT_S: "12.5", env.BATCH_SIZE: "16"})
    assert (s.model_dir, s.device, s.max_concurrency, s.port, s.request_timeout_s, s.batch_size) == (
        "/m/base", "cuda", 4, 9000, 12.5, 16)
    assert s.label == "base"
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("name,value", [
    (env.BACKEND, "onnx"), (env.DEVICE, "tpu"), (env.MAX_CONCURRENCY, "0"), (env.MAX_CONCURRENCY, "two"),
    (env.REQUEST_TIMEOUT_S, "-1"), (env.MAX_INPUT_BYTES, "1e9"),
])
def test_bad_settings_name_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_options_from_query_and_header():
    o = parse_options("language=ja&formats=srt", "word_timestamps=true&beam_size=2")
    assert (o.language, o.formats, o.word_timestamps, o.beam_size) == ("ja", ("srt",), True, 2)
    assert parse_options("", None) == RequestOptions()
    with pytest.raises(ContractError) as err:
        parse_options("task=translate", "task=transcribe")
    assert err.value.code.value == "bad_option"


@pytest.mark.parametrize("accept,formats,expected", [
    ("text/vtt", ("json",), "vtt"),
    ("application/x-subrip;q=0.9, text/plain", ("json",), "srt"),
    ("*/*", ("txt",), "txt"),
    (None, ("srt", "vtt"), "json"),
    ("application/json", ("srt",), "json"),
    ("image/png", ("vtt",), "vtt"),
])
def test_format_choice(accept, formats, expected):
    assert choose_format(accept, RequestOptions(formats=formats)) == expected


def test_registry_names_every_backend_and_rejects_unknown():
    assert set(REGISTRY) == {"faster-whisper", "torch", "triton"}
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend(Settings(backend="onnx"))


def test_faster_whisper_backend_follows_the_protocol(tiny_en_dir):
    backend = load_backend(Settings(model_dir=str(tiny_en_dir), device="cpu"))
    assert isinstance(backend, FasterWhisperBackend) and isinstance(backend, Backend)
    assert backend.multilingual is False and backend.detect_language(np.zeros(SAMPLE_RATE, np.float32)) == ("en", 1.0)
    for name in ("detect_language", "encode", "decode", "align", "healthy", "close"):
        ours = inspect.signature(getattr(FasterWhisperBackend, name))
        proto = inspect.signature(getattr(Backend, name))
        assert list(ours.parameters) == list(proto.parameters), name
    assert backend.transcribe_chunks([], None) == []  # type: ignore[arg-type]
    backend.close()


def _w(word: str, start: float, end: float) -> Word:
    return Word(start=start, end=end, word=word, probability=0.9)


def test_split_sentences_at_full_stops_pauses_and_length():
    words = [_w(" Mr.", 0, 0.3), _w(" Smith", 0.3, 0.6), _w(" came.", 0.6, 1.0), _w(" Then", 1.1, 1.3),
             _w(" left", 1.3, 1.6), _w(" later", 3.0, 3.3)]
    groups = split_sentences(words)
    assert ["".join(w.word for w in g) for g in groups] == [" Mr. Smith came.", " Then left", " later"]
    long_run = [_w(" a", i * 0.5, i * 0.5 + 0.4) for i in range(60)]  # 30 s without a stop
    assert all(g[-1].end - g[0].start <= 12.0 for g in split_sentences(long_run))
    assert sum(len(g) for g in split_sentences(long_run)) == 60


def test_chunk_maps_times_across_cut_out_silence():
    sr = SAMPLE_RATE
    # two pieces: 0-2 s of the chunk is file 10-12 s, 2-4 s of the chunk is file 20-22 s
    chunk = Chunk(np.zeros(4 * sr, np.float32), ((0, 10 * sr, 2 * sr), (2 * sr, 20 * sr, 2 * sr)))
    assert chunk.to_global(0.5) == 10.5 and chunk.to_global(2.5) == 20.5
    assert chunk.to_global(2.0, is_end=True) == 12.0 and chunk.to_global(2.0) == 20.0
    seg = Segment(id=0, start=0.2, end=3.5, text=" one two", avg_logprob=-0.1, no_speech_prob=0.0,
                  words=(_w(" one", 0.2, 2.1), _w(" two", 2.4, 3.5)))
    placed = chunk.place(seg)
    assert [(s.text, s.start, s.end) for s in placed] == [(" one", 10.2, 12.0), (" two", 20.4, 21.5)]
    # a stretch with no decoded word is reported for a second decode
    assert [c.pieces for c in chunk.uncovered([replace_words(seg, seg.words[:1])])] == [((0, 20 * sr, 2 * sr),)]


def replace_words(seg: Segment, words: tuple[Word, ...]) -> Segment:
    from dataclasses import replace

    return replace(seg, words=words, text="".join(w.word for w in words))


def test_ping_reports_a_dead_backend_so_sagemaker_replaces_the_instance():
    import asyncio

    from whisper_server.server import WhisperService

    class ChildProcessBackend:  # e.g. the triton backend, whose tritonserver can die
        alive_now = True

        def alive(self) -> bool:
            return self.alive_now

    service = WhisperService(Settings(model_dir="unused"))
    service.backend = ChildProcessBackend()  # type: ignore[assignment]
    assert asyncio.run(service.ping(None)).status_code == 200  # type: ignore[arg-type]
    service.backend.alive_now = False  # type: ignore[union-attr]
    response = asyncio.run(service.ping(None))  # type: ignore[arg-type]
    assert response.status_code == 503 and b"backend died" in response.body
