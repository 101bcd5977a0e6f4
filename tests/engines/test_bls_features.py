"""The BLS model's arithmetic on CPU: features, prompt budget, output rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from whisper_engines.bls_features import N_SAMPLES, SAMPLE_RATE, decoder_prompt_ids, log_mel, render_output

CLIP = Path(__file__).resolve().parents[1] / "data" / "audio" / "en_librispeech_test-clean_4507-16021-0012.flac"


@pytest.fixture(scope="module")
def tokenizer(base_dir: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(base_dir / "tokenizer.json"))


def _decode(path: Path) -> np.ndarray:
    from faster_whisper.audio import decode_audio

    return decode_audio(str(path), sampling_rate=SAMPLE_RATE)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_transformers(n_mels: int) -> None:
    from transformers import WhisperFeatureExtractor

    audio = _decode(CLIP)
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    expected = extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
    ours = log_mel(torch.from_numpy(audio), torch.from_numpy(np.asarray(extractor.mel_filters))).numpy()
    assert ours.shape == expected.shape == (n_mels, 3000)
    np.testing.assert_allclose(ours, expected, atol=2e-4)


def test_log_mel_pads_and_trims_to_30_s() -> None:
    from transformers import WhisperFeatureExtractor

    filters = torch.from_numpy(np.asarray(WhisperFeatureExtractor(feature_size=128).mel_filters))
    long = torch.from_numpy(np.random.default_rng(0).standard_normal(N_SAMPLES + 12345).astype(np.float32))
    torch.testing.assert_close(log_mel(long, filters), log_mel(long[:N_SAMPLES], filters))


def test_prompt_fits_the_engine_budget(tokenizer) -> None:
    sot = "<|startoftranscript|><|fr|><|transcribe|>"
    assert decoder_prompt_ids(tokenizer, sot, 14) == [50258, 50265, 50359]
    previous = "<|startofprev|> one two three four five six seven eight nine ten eleven twelve"
    ids = decoder_prompt_ids(tokenizer, previous + sot, 14)
    assert len(ids) == 14
    assert ids[0] == tokenizer.token_to_id("<|startofprev|>") and ids[-3:] == [50258, 50265, 50359]
    # The most recent words are kept, as Whisper keeps the end of a long prompt.
    assert tokenizer.decode(ids[1:-3]).strip().endswith("eleven twelve")
    assert "one two" not in tokenizer.decode(ids[1:-3])
    assert decoder_prompt_ids(tokenizer, previous + sot, 4) == [50258, 50265, 50359]  # no room: dropped
    with pytest.raises(ValueError, match="startoftranscript"):
        decoder_prompt_ids(tokenizer, "<|en|> hello", 14)
    with pytest.raises(ValueError, match="3 tokens"):
        decoder_prompt_ids(tokenizer, sot, 2)


def test_render_output_keeps_timestamps_and_stops_at_eot(tokenizer) -> None:
    eot = tokenizer.token_to_id("<|endoftext|>")
    stamp = tokenizer.token_to_id("<|notimestamps|>") + 1
    words = tokenizer.encode(" Hello world.", add_special_tokens=False).ids
    more = tokenizer.encode(" Again", add_special_tokens=False).ids
    ids = [stamp] + words + [stamp + 75, stamp + 75] + more + [stamp + 150, eot] + more
    assert render_output(tokenizer, ids) == "<|0.00|> Hello world.<|1.50|><|1.50|> Again<|3.00|>"
    assert render_output(tokenizer, [tokenizer.token_to_id("<|de|>")]) == "<|de|>"
