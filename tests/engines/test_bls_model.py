"""The REAL whisper_bls model.py (as generated into the repository) inside a real tritonserver,
on CPU, calling a stand-in for the TensorRT-LLM model that sits behind the generated
tensorrt_llm config (backend switched to python). Driven by the real Triton backend client.

What this proves without a GPU: the BLS loads with its generated config, computes features,
tokenizes the prompt within the engine budget, calls the LLM model with the tensor names and
types our generated tensorrt_llm config declares, and renders timestamped text the backend
turns into segments. What it cannot prove: that TensorRT-LLM accepts these tensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from whisper_contract.engine_spec import MANIFEST_NAME
from whisper_server.backends.base import SAMPLE_RATE, DecodeOptions
from whisper_server.backends.triton_backend import TritonBackend

pytest.importorskip("tritonclient.grpc")
STANDIN_LLM = Path(__file__).resolve().parent / "standin" / "llm_model.py"
CLIP = Path(__file__).resolve().parents[1] / "data" / "audio" / "en_librispeech_test-clean_4507-16021-0012.flac"


@pytest.fixture(scope="module")
def real_bls(make_standin_artifact, spec, tokenizer_json: Path, mel_filters_128: np.ndarray,
             tmp_path_factory: pytest.TempPathFactory, triton_dist: dict):
    from tokenizers import Tokenizer

    from whisper_engines.repository import ServingConfig, write_repository

    tmp_path = tmp_path_factory.mktemp("real-bls")
    standin_artifact = make_standin_artifact(tmp_path)

    # Regenerate the full repository (real BLS model.py), then swap only the LLM's backend.
    repo = standin_artifact / "triton"
    shutil.rmtree(repo)
    write_repository(repo, spec, model_root="/opt/ml/model", tokenizer_json=tokenizer_json,
                     mel_filters=mel_filters_128, serving=ServingConfig(bls_instances=1))
    config = repo / "tensorrt_llm" / "config.pbtxt"
    config.write_text(config.read_text().replace('backend: "tensorrtllm"', 'backend: "python"'))
    shutil.copyfile(STANDIN_LLM, repo / "tensorrt_llm" / "1" / "model.py")

    tok = Tokenizer.from_file(str(tokenizer_json))
    stamp = tok.token_to_id("<|notimestamps|>") + 1
    ids = ([stamp] + tok.encode(" Why should one", add_special_tokens=False).ids + [stamp + 50, stamp + 50]
           + tok.encode(" halt on the way?", add_special_tokens=False).ids + [stamp + 130, tok.token_to_id("<|endoftext|>")])
    log = tmp_path / "llm.jsonl"
    env = {**triton_dist["env"], "WHISPER_STANDIN_LOG": str(log), "WHISPER_STANDIN_IDS": json.dumps(ids),
           "WHISPER_STANDIN_LANGUAGE_ID": str(tok.token_to_id("<|de|>"))}
    backend = TritonBackend.from_model_dir(standin_artifact, tritonserver=triton_dist["tritonserver"],
                                           backend_directory=triton_dist["backend_directory"], env=env,
                                           startup_timeout_s=120, chunk_timeout_s=60)
    assert (standin_artifact / MANIFEST_NAME).is_file()
    yield backend, tok, log
    backend.close()


@pytest.fixture
def bls(real_bls):
    """The shared server, with the LLM stand-in's log emptied for each test."""
    backend, tok, log = real_bls
    log.write_text("")
    return backend, tok, lambda: [json.loads(line) for line in log.read_text().splitlines()]


def test_real_bls_end_to_end_on_cpu(bls) -> None:
    from faster_whisper.audio import decode_audio

    backend, tok, seen = bls
    audio = decode_audio(str(CLIP), sampling_rate=SAMPLE_RATE)
    segments_a, segments_b = backend.transcribe_chunks(
        [audio, audio[: SAMPLE_RATE]], DecodeOptions(language="fr", task="transcribe", beam_size=3,
                                                     initial_prompt="one two three four five six seven eight"))
    assert [(s.start, s.end, s.text) for s in segments_a] == [
        (0.0, 1.0, " Why should one"), (1.0, 2.6, " halt on the way?")]
    assert segments_a[0].avg_logprob == pytest.approx(-0.7 / 14, abs=1e-3)  # 13 tokens before end-of-text
    assert segments_b[-1].end == 1.0  # stamps beyond a 1 s chunk are clamped to it

    calls = seen()
    assert len(calls) == 2
    sot = [tok.token_to_id(t) for t in ("<|startoftranscript|>", "<|fr|>", "<|transcribe|>")]
    for call in calls:
        assert call["features"][:2] == [[1, 3000, 128], "float16"] and call["features"][2] > 0
        assert call["input_lengths"] == [3000] and call["encoder_output_lengths"] == [1500]
        prompt = call["decoder_input_ids"]
        # 14-token budget (spec.max_input_len): <|startofprev|> + the prompt's last 10 tokens + 3.
        assert len(prompt) == 14 and prompt[0] == tok.token_to_id("<|startofprev|>") and prompt[-3:] == sot
        assert tok.decode(prompt[1:-3]).strip().endswith("seven eight")
        assert call["decoder_input_lengths"] == [14]
        assert call["request_output_len"] == [434] and call["end_id"] == [tok.token_to_id("<|endoftext|>")]
        assert call["beam_width"] == [3] and call["return_log_probs"] == [True] and call["temperature"] is None
    # The real features of real speech differ from a mostly-silent 1 s chunk's.
    assert calls[0]["features"][2] != calls[1]["features"][2]


def test_real_bls_language_detection_and_sampling(bls) -> None:
    backend, tok, seen = bls
    audio = np.random.default_rng(0).standard_normal(5 * SAMPLE_RATE).astype(np.float32) * 0.1
    assert backend.detect_language(audio) == ("de", pytest.approx(np.exp(-0.7), abs=1e-4))
    first = seen()[0]
    assert first["decoder_input_ids"] == [tok.token_to_id("<|startoftranscript|>")]
    assert first["request_output_len"] == [1] and first["beam_width"] == [1]
    # A temperature above zero samples with beam 1 over the full distribution.
    backend.transcribe_chunks([audio], DecodeOptions(language="en", temperatures=(0.4,)))
    last = seen()[-1]
    assert last["beam_width"] == [1] and last["temperature"] == [pytest.approx(0.4)]
    assert last["runtime_top_k"] == [0] and last["runtime_top_p"] == [1.0]
