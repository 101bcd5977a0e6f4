"""The arithmetic of the Triton BLS front model, kept apart so it runs (and is tested) on CPU.

Shipped into the model repository beside ``model.py`` (``whisper_bls/1/``): log-mel features,
the decoder prompt within the engine's input budget, and rendering output tokens as text
that keeps Whisper's timestamp tokens (``<|1.24|>``), which the container turns into segments.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
N_SAMPLES = 30 * SAMPLE_RATE  # Whisper always sees a 30 s window
SECONDS_PER_TIMESTAMP = 0.02


def log_mel(wav: torch.Tensor, mel_filters: torch.Tensor) -> torch.Tensor:
    """Whisper's log-mel spectrogram of up to 30 s of 16 kHz audio, zero-padded to 30 s.

    ``mel_filters`` is (n_fft // 2 + 1, n_mels), the orientation transformers'
    WhisperFeatureExtractor stores. Returns (n_mels, 3000).
    """
    wav = wav[:N_SAMPLES].float()
    wav = F.pad(wav, (0, N_SAMPLES - wav.shape[-1]))
    window = torch.hann_window(N_FFT, device=wav.device)
    stft = torch.stft(wav, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2  # the last frame is dropped, as openai/whisper does
    mel = mel_filters.to(power.dtype).T @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def decoder_prompt_ids(tokenizer: Any, text_prefix: str, max_input_len: int) -> list[int]:
    """Token ids of ``[<|startofprev|> previous text] <|startoftranscript|> <|lang|> <|task|> ...``.

    The engine accepts at most ``max_input_len`` prompt tokens. Like Whisper, which keeps only
    the most recent part of a long prompt, the previous text is cut from the front to fit;
    the start-of-transcript sequence itself is never cut (too long is an error).
    """
    ids = tokenizer.encode(text_prefix, add_special_tokens=False).ids
    sot = tokenizer.token_to_id("<|startoftranscript|>")
    if sot not in ids:
        raise ValueError("TEXT_PREFIX must contain <|startoftranscript|>")
    start = ids.index(sot)
    previous, sot_sequence = ids[:start], ids[start:]
    if len(sot_sequence) > max_input_len:
        raise ValueError(f"the start sequence has {len(sot_sequence)} tokens; the engine takes {max_input_len}")
    room = max_input_len - len(sot_sequence) - 1  # one for <|startofprev|>
    if not previous or room <= 0:
        return sot_sequence
    return previous[:1] + previous[1:][-room:] + sot_sequence


def render_output(tokenizer: Any, ids: Sequence[int]) -> str:
    """Generated ids as text, timestamp tokens written as ``<|s.ss|>``, stopping at end-of-text.

    Timestamps are rendered from their ids rather than through the tokenizer, since not every
    tokenizer.json lists them as tokens.
    """
    eot = tokenizer.token_to_id("<|endoftext|>")
    timestamp_begin = tokenizer.token_to_id("<|notimestamps|>") + 1
    parts: list[str] = []
    text_run: list[int] = []

    def flush() -> None:
        if text_run:
            parts.append(tokenizer.decode(text_run, skip_special_tokens=False))
            text_run.clear()

    for token in ids:
        if token == eot:
            break
        if token >= timestamp_begin:
            flush()
            parts.append(f"<|{(token - timestamp_begin) * SECONDS_PER_TIMESTAMP:.2f}|>")
        elif token > eot:  # other special tokens (language, task): kept, so language detection reads them
            flush()
            parts.append(tokenizer.id_to_token(token))
        else:
            text_run.append(token)
    flush()
    return "".join(parts)
