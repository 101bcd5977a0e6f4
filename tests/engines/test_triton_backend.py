"""The Triton backend against a real tritonserver (nvidia-pytriton's binary) over real gRPC.

The served model is a stand-in (tests/engines/standin/model.py) behind the GENERATED
whisper_bls config, so tensor names, types and shapes are the ones production uses.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from whisper_contract import ContractError, ErrorCode
from whisper_server.backends.base import SAMPLE_RATE, Backend, DecodeOptions
from whisper_server.backends.triton_backend import TritonBackend, text_prefix, text_to_tokens
from whisper_server.decoding import cut_at_timestamps

pytest.importorskip("tritonclient.grpc")


def _start(artifact: Path, triton_dist: dict, log: Path) -> TritonBackend:
    log.touch()
    env = {**triton_dist["env"], "WHISPER_STANDIN_LOG": str(log)}
    b = TritonBackend.from_model_dir(artifact, tritonserver=triton_dist["tritonserver"],
                                     backend_directory=triton_dist["backend_directory"], env=env,
                                     startup_timeout_s=60, chunk_timeout_s=1.5, max_in_flight=8)
    b.requests = lambda: [json.loads(line) for line in log.read_text().splitlines()]  # type: ignore[attr-defined]
    return b


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, make_standin_artifact, triton_dist: dict):
    root = tmp_path_factory.mktemp("shared-triton")
    b = _start(make_standin_artifact(root), triton_dist, root / "requests.jsonl")
    yield b, root / "requests.jsonl"
    b.close()


@pytest.fixture
def backend(shared) -> TritonBackend:
    """One server for the tests that leave it healthy; each test sees only its own requests."""
    b, log = shared
    assert b.alive()
    log.write_text("")
    return b


@pytest.fixture
def own_backend(standin_artifact: Path, triton_dist: dict, tmp_path: Path):
    """A server of its own, for tests that wedge or kill it."""
    b = _start(standin_artifact, triton_dist, tmp_path / "requests.jsonl")
    yield b
    b.close()


def _chunk(seconds: float, first: float = 0.1) -> np.ndarray:
    audio = np.full(int(seconds * SAMPLE_RATE), 0.01, dtype=np.float32)
    audio[0] = first
    return audio


def test_batch_of_chunks_round_trip(backend: TritonBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.info.backend == "triton" and backend.info.version == "tensorrt-llm-0.20.0"
    chunks = [_chunk(s) for s in (4.0, 30.0, 12.5, 1.0, 8.0, 20.0)]
    out = backend.transcribe_chunks(chunks, DecodeOptions(language="fr", task="translate", beam_size=9))
    assert len(out) == len(chunks)
    for chunk, segments in zip(chunks, out):
        n = len(chunk)
        duration = n / SAMPLE_RATE
        # The spec's max_beam (4) caps the requested beam of 9.
        assert [s.text for s in segments] == [f" Heard {n} samples.", " Beam 4, temperature 0.0."]
        assert segments[0].start == 0.0 and segments[1].end == pytest.approx(duration, abs=0.01)
        assert segments[0].end == segments[1].start == pytest.approx(duration / 2, abs=0.01)
        assert segments[0].avg_logprob == pytest.approx(-0.05)
    seen = backend.requests()  # type: ignore[attr-defined]
    assert len(seen) == len(chunks)
    assert {r["prefix"] for r in seen} == {"<|startoftranscript|><|fr|><|translate|>"}
    assert sorted(r["n"] for r in seen) == sorted(len(c) for c in chunks)
    # Every chunk is padded to 30 s with zeros so Triton may batch them; the true length travels.
    assert all(r["shape"] == [1, 30 * SAMPLE_RATE] and r["tail_zero"] for r in seen)
    assert sorted(r["sum"] for r in seen) == pytest.approx(sorted(float(c.sum()) for c in chunks), abs=1e-2)
    # Requests were in flight together: the dynamic batcher put several into one execute call.
    assert max(r["batch"] for r in seen) > 1


def test_prompt_and_hotwords_travel_in_the_prefix(backend: TritonBackend) -> None:
    backend.transcribe_chunks([_chunk(2.0)], DecodeOptions(language="en", initial_prompt="Kubernetes talk.",
                                                           hotwords="SageMaker"))
    (seen,) = backend.requests()  # type: ignore[attr-defined]
    assert seen["prefix"] == "<|startofprev|> SageMaker Kubernetes talk.<|startoftranscript|><|en|><|transcribe|>"


def test_detect_language(backend: TritonBackend) -> None:
    language, probability = backend.detect_language(_chunk(45.0))
    assert (language, probability) == ("de", pytest.approx(0.9, abs=1e-4))
    (seen,) = backend.requests()  # type: ignore[attr-defined]
    assert seen["max_new"] == 1 and seen["n"] == 30 * SAMPLE_RATE  # only the first 30 s


def test_temperature_fallback_on_repetitive_output(backend: TritonBackend) -> None:
    out = backend.transcribe_chunks([_chunk(3.0, first=5.0), _chunk(3.0)], DecodeOptions(language="en"))
    assert out[0][1].text == " Beam 1, temperature 0.2."  # retried, sampled at 0.2
    assert out[1][1].text == " Beam 4, temperature 0.0."  # the good chunk was not retried
    temps = sorted((r["first"] == 5.0, r["temperature"]) for r in backend.requests())  # type: ignore[attr-defined]
    assert temps == [(False, 0.0), (True, 0.0), (True, 0.2)]


def test_word_timestamps_are_refused_clearly(backend: TritonBackend) -> None:
    with pytest.raises(ContractError) as info:
        backend.transcribe_chunks([_chunk(1.0)], DecodeOptions(language="en", word_timestamps=True))
    assert info.value.code == ErrorCode.BAD_OPTION and "word_timestamps" in info.value.message


def test_slow_chunk_times_out_and_server_stays_usable(own_backend: TritonBackend, tmp_path: Path) -> None:
    backend = own_backend
    slept = tmp_path / "requests.jsonl.slept"  # written by the stand-in when the slow request ends
    started = time.monotonic()
    with pytest.raises(ContractError) as info:
        backend.transcribe_chunks([_chunk(2.0, first=7.0)], DecodeOptions(language="en"))
    assert info.value.code == ErrorCode.TIMEOUT and time.monotonic() - started < 3.0, info.value.message
    assert backend.alive()
    # The single stand-in instance is busy with the abandoned request until it has slept:
    # wait for its own signal (not a guessed sleep), with a deadline for a loaded machine.
    deadline = time.monotonic() + 30
    while not slept.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slept.exists(), "the stand-in never finished the slow request"
    assert backend.transcribe_chunks([_chunk(2.0)], DecodeOptions(language="en"))[0]


def test_server_death_mid_request_is_reported(own_backend: TritonBackend) -> None:
    backend = own_backend
    with pytest.raises(ContractError) as info:
        backend.transcribe_chunks([_chunk(2.0, first=9.0)], DecodeOptions(language="en"))
    assert info.value.code == ErrorCode.INTERNAL and "not running" in info.value.message
    assert not backend.alive()
    with pytest.raises(ContractError, match="not running"):
        backend.transcribe_chunks([_chunk(2.0)], DecodeOptions(language="en"))


def test_startup_failure_names_the_cause(standin_artifact: Path, triton_dist: dict) -> None:
    broken = standin_artifact / "triton" / "whisper_bls" / "1" / "model.py"
    broken.write_text("raise ImportError('stand-in refuses to load')\n")
    with pytest.raises(ContractError, match="not running") as info:
        TritonBackend.from_model_dir(standin_artifact, tritonserver=triton_dist["tritonserver"],
                                     backend_directory=triton_dist["backend_directory"], env=triton_dist["env"],
                                     startup_timeout_s=60)
    assert "stand-in refuses to load" in info.value.message


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        TritonBackend.from_model_dir(tmp_path)


def test_engine_text_is_cut_like_any_backend(backend: TritonBackend) -> None:
    """The engines' text becomes token ids, cut by the shared rule (whisper_server.decoding)."""
    tok = backend.tokenizer

    def cut(text: str, duration: float) -> list[tuple[float, float, str]]:
        pieces, _ = cut_at_timestamps(text_to_tokens(tok, text), tok.specials.timestamp_begin, duration)
        return [(s, e, tok.decode(p)) for s, e, p in pieces if tok.decode(p).strip()]

    assert cut("", 5.0) == []
    assert cut(" no stamps at all", 4.0) == [(0.0, 4.0, " no stamps at all")]
    # A stamp past the chunk end is clamped; special tokens other than stamps are dropped.
    assert cut("<|en|><|1.00|> late<|29.00|>", 4.0) == [(1.0, 4.0, " late")]
    assert text_prefix(None, "transcribe") == "<|startoftranscript|>"


def test_launch_from_server_settings(tmp_path: Path) -> None:
    from whisper_server.backends.triton_backend import TritonLaunch
    from whisper_server.settings import Settings

    settings = Settings.from_env({"WHISPER_MODEL_DIR": str(tmp_path), "WHISPER_BACKEND": "triton",
                                  "WHISPER_BATCH_SIZE": "24", "WHISPER_MODEL_NAME": "my-lora"})
    launch = TritonLaunch.from_settings(settings, {"WHISPER_TRITONSERVER": "/opt/tritonserver/bin/tritonserver",
                                                   "WHISPER_TRITON_CHUNK_TIMEOUT_S": "45"})
    assert (launch.model_dir, launch.max_in_flight, launch.label) == (tmp_path, 24, "my-lora")
    assert (launch.tritonserver, launch.chunk_timeout_s, launch.startup_timeout_s) == (
        "/opt/tritonserver/bin/tritonserver", 45.0, 900.0)
    # What the server's registry does: TritonBackend(settings). No artifact there: a clear error.
    with pytest.raises(FileNotFoundError, match="engine build artifact"):
        TritonBackend(settings)


def test_engines_for_another_gpu_are_refused(standin_artifact: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in nvidia-smi on PATH reporting an L4 (compute capability 8.9); the engines say sm86.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 8.9\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match=r"built for sm86 \(NVIDIA A10G\), this GPU is sm89.*start-build"):
        TritonBackend.from_model_dir(standin_artifact, tritonserver="/nonexistent/tritonserver")


def test_relocation_rewrites_engine_paths_only_when_moved(tmp_path: Path, spec, tokenizer_json: Path,
                                                         mel_filters_128) -> None:
    from whisper_engines.repository import write_repository
    from whisper_server.backends.triton_backend import relocate_repository

    artifact = tmp_path / "artifact"
    repo = write_repository(artifact / "triton", spec, model_root="/opt/ml/model", tokenizer_json=tokenizer_json,
                            mel_filters=mel_filters_128)
    moved = relocate_repository(repo, "/opt/ml/model", artifact, tmp_path / "scratch")
    text = (moved / "tensorrt_llm" / "config.pbtxt").read_text()
    assert f'"{artifact.resolve()}/engines/decoder"' in text and "/opt/ml/model" not in text
    assert (repo / "tensorrt_llm" / "config.pbtxt").read_text().count("/opt/ml/model/engines/") == 2  # original kept
    assert relocate_repository(repo, str(artifact.resolve()), artifact, tmp_path / "scratch2") == repo
