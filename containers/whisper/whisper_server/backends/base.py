"""The interface every Whisper backend implements (defined in ``whisper_server.decoding``).

The server owns everything around the model: decoding any audio format, VAD segmentation
into windows of at most 30 s, batching, global timestamps, formats and errors; the
decoding policy (prompt, temperature fallback, no-speech skip, segments, words) is
``whisper_server.decoding``. A backend supplies only primitives (encode, decode, align,
detect_language) and its ``Capabilities``, so faster-whisper, PyTorch and TensorRT-LLM/Triton
share every other line.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from whisper_contract import Segment
from whisper_server.decoding import (CHUNK_SAMPLES, SAMPLE_RATE, TEMPERATURES, Alignment, Attempt, Backend,
                                     Capabilities, DecodeOptions, Prompt, transcribe_chunks)


class BackendBase:
    """What every backend gets from the shared decoding policy."""

    capabilities: Capabilities

    @property
    def multilingual(self) -> bool:
        return self.capabilities.multilingual

    @property
    def word_timestamps(self) -> bool:
        return self.capabilities.word_timestamps

    def transcribe_chunks(self, chunks: Sequence[np.ndarray], options: DecodeOptions) -> list[list[Segment]]:
        """Each chunk (float32, 16 kHz, mono, len <= CHUNK_SAMPLES) as chunk-relative
        segments with ids from 0, in input order; the server shifts and renumbers them."""
        return transcribe_chunks(self, chunks, options)  # type: ignore[arg-type]

    def healthy(self) -> bool:
        return True


__all__ = ["Alignment", "Attempt", "Backend", "BackendBase", "CHUNK_SAMPLES", "Capabilities", "DecodeOptions",
           "Prompt", "SAMPLE_RATE", "TEMPERATURES"]
