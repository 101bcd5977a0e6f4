"""The faster-whisper (CTranslate2) backend: CPU int8 or CUDA float16/int8_float16.

Primitives only; the policy is ``whisper_server.decoding``. Everything goes through
CTranslate2's public ``ctranslate2.models.Whisper`` API (``encode``, ``generate``, ``align``,
``detect_language``) and faster-whisper's feature extractor, not faster-whisper's
transcription internals (its ``TranscriptionOptions`` fields change between releases).
A batch decodes without timestamp tokens, as faster-whisper's BatchedInferencePipeline does
(with timestamps Whisper leaves a window's last unfinished sentence for a next window that
a batch never has); the shared policy then splits each window into sentences at the word
times from ``align``.
"""

from __future__ import annotations

import json
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Any, Sequence

import ctranslate2
import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

from whisper_contract import ModelInfo
from whisper_server.backends.base import CHUNK_SAMPLES, Alignment, Attempt, BackendBase, Capabilities, Prompt
from whisper_server.decoding import (MAX_INITIAL_TIMESTAMP, N_TEXT_CTX, TIME_PRECISION, WhisperTokenizer,
                                     alignment_frames, suppressed_tokens)
from whisper_server.settings import Settings

MAX_BEAM = 10  # whisper_contract.options.MAX_BEAM_SIZE: CTranslate2 takes any width


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    return device


def resolve_compute_type(device: str, compute_type: str) -> str:
    if compute_type != "default":
        return compute_type
    return "float16" if device == "cuda" else "int8"


class FasterWhisperBackend(BackendBase):
    def __init__(self, settings: Settings) -> None:
        self.device = resolve_device(settings.device)
        self.compute_type = resolve_compute_type(self.device, settings.compute_type)
        model_dir = Path(settings.model_dir)
        self.model = ctranslate2.models.Whisper(
            str(model_dir), device=self.device, compute_type=self.compute_type,
            intra_threads=settings.cpu_threads,
            inter_threads=settings.max_concurrency,  # concurrent requests decode in parallel
        )
        config = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
        self.tokenizer = WhisperTokenizer(model_dir / "tokenizer.json")
        self.features = FeatureExtractor(feature_size=self.model.n_mels)
        self._suppress = suppressed_tokens(self.tokenizer, config.get("suppress_ids") or ())
        self._local = threading.local()
        self.capabilities = Capabilities(multilingual=bool(self.model.is_multilingual), word_timestamps=True,
                                         max_beam=MAX_BEAM, timestamps=False)
        self.info = ModelInfo(
            model=settings.label,
            backend="faster-whisper",
            version=f"faster-whisper {version('faster-whisper')}, ctranslate2 {ctranslate2.__version__}",
            device=self.device,
            compute_type=self.compute_type,
        )

    # --- primitives ---------------------------------------------------------------------
    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        if not self.multilingual:
            return "en", 1.0
        encoded = self.encode([audio[:CHUNK_SAMPLES]])
        # The pipeline decodes this same chunk next: keep its encoding (this thread only)
        # instead of running the encoder, the costliest step on a CPU, twice.
        self._local.encoded = (audio, encoded)
        token, probability = self.model.detect_language(encoded)[0][0]
        return token[2:-2], float(probability)

    def encode(self, chunks: Sequence[np.ndarray]) -> Any:
        cached_audio, cached = getattr(self._local, "encoded", (None, None))
        self._local.encoded = (None, None)
        if len(chunks) == 1 and cached_audio is not None and len(chunks[0]) == len(cached_audio[:CHUNK_SAMPLES]) \
                and np.shares_memory(chunks[0], cached_audio):
            return cached
        # faster-whisper's features: 30 s padded, the last frame dropped (transcribe.py)
        mel = np.stack([_pad_or_trim(self.features(np.asarray(c, dtype=np.float32))[..., :-1]) for c in chunks])
        return self.model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=False)

    def decode(self, encoded: Any, rows: Sequence[int], prompt: Prompt, temperature: float,
               beam_size: int) -> list[Attempt]:
        enc = encoded if len(rows) == self._batch(encoded) and list(rows) == list(range(len(rows))) \
            else self._rows(encoded, rows)
        results = self.model.generate(
            enc, [list(prompt.tokens) for _ in rows], beam_size=beam_size if temperature == 0 else 1,
            num_hypotheses=1, length_penalty=1.0, max_length=N_TEXT_CTX,  # CTranslate2 counts the prompt in it
            return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self._suppress,
            sampling_topk=1 if temperature == 0 else 0, sampling_temperature=temperature or 1.0,
            max_initial_timestamp_index=round(MAX_INITIAL_TIMESTAMP / TIME_PRECISION))
        out = []
        for result in results:
            tokens = result.sequences_ids[0]
            # CTranslate2's score is the cumulative log-probability / length ** length_penalty
            out.append(Attempt(tuple(tokens), float(result.scores[0]) * len(tokens), float(result.no_speech_prob)))
        return out

    def align(self, encoded: Any, rows: Sequence[int], sot_sequence: Sequence[int],
              tokens: Sequence[Sequence[int]], durations: Sequence[float]) -> list[Alignment]:
        enc = self._rows(encoded, rows) if list(rows) != list(range(self._batch(encoded))) else encoded
        frames = [alignment_frames(d) for d in durations]
        results = self.model.align(enc, list(sot_sequence), [list(t) for t in tokens], frames, median_filter_width=7)
        return [Alignment(np.array([p[0] for p in r.alignments]), np.array([p[1] for p in r.alignments]),
                          list(r.text_token_probs)) for r in results]

    def close(self) -> None:
        # CTranslate2 frees the model (and its GPU memory) when the last reference goes.
        self.model = None  # type: ignore[assignment]

    # --- helpers ------------------------------------------------------------------------
    @staticmethod
    def _batch(encoded: Any) -> int:
        return int(encoded.shape[0])

    def _rows(self, encoded: Any, rows: Sequence[int]) -> Any:
        array = np.asarray(encoded.to_device(ctranslate2.Device.cpu) if self.device == "cuda" else encoded)
        picked = np.ascontiguousarray(array[list(rows)])
        view = ctranslate2.StorageView.from_array(picked)
        return view.to_device(ctranslate2.Device.cuda) if self.device == "cuda" else view


def _pad_or_trim(mel: np.ndarray, frames: int = CHUNK_SAMPLES // 160) -> np.ndarray:
    if mel.shape[-1] >= frames:
        return mel[..., :frames]
    return np.pad(mel, [(0, 0)] * (mel.ndim - 1) + [(0, frames - mel.shape[-1])])
