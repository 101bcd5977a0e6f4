"""The interface every Whisper backend implements.

The server owns everything around the model: decoding any audio format, VAD segmentation
into windows of at most 30 s, batching, global timestamps, formats and errors. A backend
only turns a batch of <=30 s, 16 kHz mono chunks into chunk-relative segments, so
faster-whisper, PyTorch and TensorRT-LLM/Triton share every other line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from whisper_contract import ModelInfo, Segment

SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS
# Whisper's reference temperature fallback schedule (openai/whisper transcribe.py).
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class DecodeOptions:
    """What reaches a backend: already validated, language already resolved."""

    language: str  # resolved: detection happens once per file, before decoding
    task: str = "transcribe"
    beam_size: int = 5
    word_timestamps: bool = False
    initial_prompt: str | None = None
    hotwords: str | None = None
    temperatures: tuple[float, ...] = TEMPERATURES


@runtime_checkable
class Backend(Protocol):
    info: ModelInfo
    multilingual: bool
    # False where the model exposes no cross-attention to align words with (TensorRT-LLM
    # engines) or the aligner is not written yet (torch): the server then neither asks for
    # words nor accepts a request for them.
    word_timestamps: bool

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """Most likely language of up to 30 s of audio, and its probability."""
        ...

    def transcribe_chunks(self, chunks: Sequence[np.ndarray], options: DecodeOptions) -> list[list[Segment]]:
        """Decode each chunk (float32, 16 kHz, mono, len <= CHUNK_SAMPLES).

        Returns one list of segments per chunk, in input order, with times relative to the
        chunk's start and ids starting at 0; the server shifts and renumbers them.
        """
        ...

    def close(self) -> None:
        """Release the model (GPU memory, child processes)."""
        ...
