"""The faster-whisper (CTranslate2) backend: CPU int8 or CUDA float16/int8_float16.

``transcribe_chunks`` encodes and decodes a whole batch of <=30 s chunks in one CTranslate2
call (the calls faster-whisper's BatchedInferencePipeline makes), then aligns words with
the cross-attention (one more batched call) and splits each chunk into sentence-sized
segments at the word times. A chunk whose batched decode looks like a
failure (repetition loop, very low log-probability) is decoded again on its own with
Whisper's temperature fallback, as sequential faster-whisper would.
"""

from __future__ import annotations

import logging
import math
import threading
from importlib.metadata import version
from typing import Any, Sequence

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import TranscriptionOptions, get_compression_ratio, get_suppressed_tokens

from whisper_contract import ModelInfo, Segment, Word
from whisper_server.backends.base import CHUNK_SAMPLES, DecodeOptions, SAMPLE_RATE
from whisper_server.settings import Settings

log = logging.getLogger(__name__)

# Whisper's own failure thresholds (openai/whisper transcribe.py defaults).
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END = set(".?!。？！")
TITLES = {"Mr.", "Mrs.", "Ms.", "Dr.", "St.", "Prof.", "Jr.", "Sr."}  # a full stop that ends no sentence
PAUSE_S = 1.0
MAX_SEGMENT_S = 12.0


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    return device


def resolve_compute_type(device: str, compute_type: str) -> str:
    if compute_type != "default":
        return compute_type
    return "float16" if device == "cuda" else "int8"


def split_sentences(words: list[Word]) -> list[list[Word]]:
    """Group a chunk's words into subtitle-sized segments: at sentence ends, at pauses, and
    before a segment grows past ``MAX_SEGMENT_S``."""
    groups: list[list[Word]] = [[]]
    for i, word in enumerate(words):
        current = groups[-1]
        if current and (word.start - current[-1].end > PAUSE_S or word.end - current[0].start > MAX_SEGMENT_S):
            groups.append([])
        groups[-1].append(word)
        stripped = word.word.strip()
        if stripped[-1:] in SENTENCE_END and stripped not in TITLES and i + 1 < len(words):
            groups.append([])
    return [g for g in groups if g]


class FasterWhisperBackend:
    def __init__(self, settings: Settings) -> None:
        self.device = resolve_device(settings.device)
        self.compute_type = resolve_compute_type(self.device, settings.compute_type)
        self.model = WhisperModel(
            settings.model_dir,
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=settings.cpu_threads,
            num_workers=settings.max_concurrency,  # concurrent requests decode in parallel
            local_files_only=True,
        )
        self.multilingual = bool(self.model.model.is_multilingual)
        self.word_timestamps = True
        self._local = threading.local()
        self.info = ModelInfo(
            model=settings.label,
            backend="faster-whisper",
            version=f"faster-whisper {version('faster-whisper')}, ctranslate2 {ctranslate2.__version__}",
            device=self.device,
            compute_type=self.compute_type,
        )

    # --- Backend protocol ---------------------------------------------------------------
    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        if not self.multilingual:
            return "en", 1.0
        encoder_output = self._encode([audio[:CHUNK_SAMPLES]])
        # The pipeline decodes this same chunk next: keep its encoding (this thread only)
        # instead of running the encoder, the costliest step on a CPU, twice.
        self._local.encoded = (audio, encoder_output)
        token, probability = self.model.model.detect_language(encoder_output)[0][0]
        return token[2:-2], float(probability)

    def transcribe_chunks(self, chunks: Sequence[np.ndarray], options: DecodeOptions) -> list[list[Segment]]:
        if not chunks:
            return []
        tokenizer = Tokenizer(self.model.hf_tokenizer, self.multilingual, task=options.task,
                              language=options.language)
        topts = self._options(tokenizer, options)
        cached_audio, cached = getattr(self._local, "encoded", (None, None))
        self._local.encoded = (None, None)
        if len(chunks) == 1 and chunks[0] is cached_audio:
            encoder_output = cached
        else:
            encoder_output = self._encode(chunks)
        outputs = self._generate(encoder_output, len(chunks), tokenizer, topts)

        durations = [len(chunk) / SAMPLE_RATE for chunk in chunks]
        texts = [[t for t in out["tokens"] if t < tokenizer.eot] for out in outputs]
        # Words are always aligned: they are how a <=30 s chunk splits into sentences.
        words_by_chunk = self._align(tokenizer, encoder_output, texts, durations)

        results: list[list[Segment]] = []
        for i, out in enumerate(outputs):
            text = tokenizer.decode(texts[i])
            avg_logprob, no_speech = float(out["avg_logprob"]), float(out["no_speech_prob"])
            failed = text.strip() and (
                get_compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD
                or (avg_logprob < LOG_PROB_THRESHOLD and no_speech <= NO_SPEECH_THRESHOLD)
            )
            if failed and len(options.temperatures) > 1:
                results.append(self._decode_alone(chunks[i], options))
                continue
            if not text.strip():
                results.append([])
                continue
            words = [Word(start=round(float(w["start"]), 3), end=round(float(w["end"]), 3), word=w["word"],
                          probability=round(float(w["probability"]), 4)) for w in words_by_chunk[i]]
            groups = split_sentences(words) if words else []
            if not groups or "".join(w.word for w in words).strip() != text.strip():
                # alignment lost text (rare): keep the chunk whole rather than lose words
                groups = [words]
                pieces = [(0.0, durations[i], text)]
            else:
                pieces = [(g[0].start, g[-1].end, "".join(w.word for w in g)) for g in groups]
            segments = []
            for (start, end, piece_text), group in zip(pieces, groups):
                segments.append(Segment(
                    id=len(segments), start=round(start, 3), end=round(max(end, start), 3), text=piece_text,
                    avg_logprob=round(avg_logprob, 4), no_speech_prob=round(no_speech, 4),
                    words=tuple(group) if options.word_timestamps else None))
            results.append(segments)
        return results

    def close(self) -> None:
        # CTranslate2 frees the model (and its GPU memory) when the last reference goes.
        self.model = None  # type: ignore[assignment]

    # --- helpers ------------------------------------------------------------------------
    def _encode(self, chunks: Sequence[np.ndarray]) -> Any:
        extractor = self.model.feature_extractor
        return self.model.encode(np.stack([pad_or_trim(extractor(chunk)[..., :-1]) for chunk in chunks]))

    def _generate(self, encoder_output: Any, batch: int, tokenizer: Tokenizer,
                  options: TranscriptionOptions) -> list[dict[str, Any]]:
        """One batched beam search: what BatchedInferencePipeline.generate_segment_batched
        does after its encode."""
        prompt = self.model.get_prompt(
            tokenizer,
            previous_tokens=tokenizer.encode(options.initial_prompt) if options.initial_prompt else [],
            without_timestamps=options.without_timestamps, hotwords=options.hotwords)
        results = self.model.model.generate(
            encoder_output, [list(prompt) for _ in range(batch)], beam_size=options.beam_size,
            patience=options.patience, length_penalty=options.length_penalty, max_length=self.model.max_length,
            suppress_blank=options.suppress_blank, suppress_tokens=options.suppress_tokens,
            return_scores=True, return_no_speech_prob=True, sampling_temperature=options.temperatures[0],
            repetition_penalty=options.repetition_penalty, no_repeat_ngram_size=options.no_repeat_ngram_size)
        outputs = []
        for result in results:
            seq_len = len(result.sequences_ids[0])
            cum_logprob = result.scores[0] * (seq_len ** options.length_penalty)
            outputs.append(dict(avg_logprob=cum_logprob / (seq_len + 1), no_speech_prob=result.no_speech_prob,
                                tokens=result.sequences_ids[0]))
        return outputs

    def _options(self, tokenizer: Tokenizer, options: DecodeOptions) -> TranscriptionOptions:
        return TranscriptionOptions(
            beam_size=options.beam_size, best_of=5, patience=1.0, length_penalty=1.0,
            repetition_penalty=1.0, no_repeat_ngram_size=0,
            log_prob_threshold=LOG_PROB_THRESHOLD, no_speech_threshold=NO_SPEECH_THRESHOLD,
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
            condition_on_previous_text=False, prompt_reset_on_temperature=0.5,
            temperatures=list(options.temperatures[:1]),
            initial_prompt=options.initial_prompt, prefix=None, suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            # Text only, as faster-whisper's batched pipeline does: with timestamp tokens Whisper
            # leaves a window's last unfinished sentence for a next window that a batch never has.
            without_timestamps=True,
            max_initial_timestamp=1.0, word_timestamps=options.word_timestamps,
            prepend_punctuations=PREPEND_PUNCTUATIONS, append_punctuations=APPEND_PUNCTUATIONS,
            multilingual=False, max_new_tokens=None, clip_timestamps="0",
            hallucination_silence_threshold=None, hotwords=options.hotwords,
        )

    def _align(self, tokenizer: Tokenizer, encoder_output: Any, texts: list[list[int]],
               durations: list[float]) -> list[list[dict[str, Any]]]:
        segmented = [[dict(seek=0, start=0.0, end=d, tokens=t)] for t, d in zip(texts, durations)]
        sizes = [int(math.ceil(d) * self.model.frames_per_second) for d in durations]
        self.model.add_word_timestamps(segmented, tokenizer, encoder_output, sizes,
                                       PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, 0.0)
        return [chunk[0].get("words", []) for chunk in segmented]

    def _decode_alone(self, chunk: np.ndarray, options: DecodeOptions) -> list[Segment]:
        segments, _ = self.model.transcribe(
            chunk, language=options.language, task=options.task, beam_size=options.beam_size,
            temperature=list(options.temperatures), initial_prompt=options.initial_prompt,
            hotwords=options.hotwords, word_timestamps=options.word_timestamps,
            condition_on_previous_text=False, vad_filter=False,
        )
        out = []
        for s in segments:
            if not s.text.strip():
                continue
            words = None
            if options.word_timestamps:
                words = tuple(Word(start=round(w.start, 3), end=round(w.end, 3), word=w.word,
                                   probability=round(float(w.probability), 4)) for w in (s.words or []))
            out.append(Segment(id=len(out), start=round(s.start, 3), end=round(s.end, 3), text=s.text,
                               avg_logprob=round(float(s.avg_logprob), 4),
                               no_speech_prob=round(float(s.no_speech_prob), 4), words=words))
        return out
