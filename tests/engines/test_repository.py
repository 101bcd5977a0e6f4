"""The generated Triton model repository: golden files, schema validity, and spec provenance."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from whisper_contract.engine_spec import EngineBuildSpec
from whisper_engines.repository import ServingConfig, bls_config, llm_config, write_repository

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"  # regenerate after an intended change


def _parse(text: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    # Triton's own ModelConfig schema: an unknown field or a bad enum fails here, as it would
    # when tritonserver loads the repository.
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("name", ["whisper_bls", "tensorrt_llm"])
def test_golden(name: str, spec: EngineBuildSpec) -> None:
    text = bls_config(spec, ServingConfig()) if name == "whisper_bls" else llm_config(spec, ServingConfig(), "/opt/ml/model")
    golden = GOLDEN / f"{name}.pbtxt"
    if UPDATE:
        golden.write_text(text)
    assert text == golden.read_text()


def test_configs_parse_as_triton_model_configs(spec: EngineBuildSpec) -> None:
    bls = _parse(bls_config(spec, ServingConfig()))
    assert bls.name == "whisper_bls" and bls.backend == "python"
    # The upstream whisper BLS interface, unchanged (TensorRT-LLM triton_backend/all_models/whisper).
    inputs = {t.name: t for t in bls.input}
    assert (inputs["TEXT_PREFIX"].data_type, list(inputs["TEXT_PREFIX"].dims)) == (13, [1])  # TYPE_STRING
    assert (inputs["WAV"].data_type, list(inputs["WAV"].dims)) == (11, [-1])  # TYPE_FP32
    assert (inputs["WAV_LENS"].data_type, inputs["WAV_LENS"].optional) == (8, True)  # TYPE_INT32
    assert all(inputs[n].optional for n in ("BEAM_WIDTH", "TEMPERATURE", "MAX_NEW_TOKENS"))
    assert [o.name for o in bls.output][0] == "TRANSCRIPTS" and bls.output[0].data_type == 13
    llm = _parse(llm_config(spec, ServingConfig(), "/opt/ml/model"))
    assert llm.backend == "tensorrtllm"
    assert llm.parameters["gpt_model_path"].string_value == "/opt/ml/model/engines/decoder"
    assert llm.parameters["encoder_model_path"].string_value == "/opt/ml/model/engines/encoder"


# Each spec/serving field, a changed value, and where that value must show up.
CHANGES = [
    ("max_batch", 48, [("whisper_bls", "max_batch_size: 48"), ("tensorrt_llm", "max_batch_size: 48"),
                       ("tensorrt_llm", "preferred_batch_size: [ 48 ]")]),
    ("max_beam", 2, [("whisper_bls", 'key: "max_beam"\n    value {\n      string_value: "2"'), ("tensorrt_llm", 'key: "max_beam_width"\n    value {\n      string_value: "2"')]),
    ("max_input_len", 20, [("whisper_bls", 'key: "max_input_len"\n    value {\n      string_value: "20"'),
                           ("tensorrt_llm", 'string_value: "428"')]),  # attention window 20 + 408
    ("max_output_len", 100, [("whisper_bls", 'string_value: "100"'), ("tensorrt_llm", 'string_value: "114"')]),
    ("dtype", "bfloat16", [("whisper_bls", 'string_value: "bfloat16"'), ("tensorrt_llm", "TYPE_BF16")]),
]


@pytest.mark.parametrize("field,value,expect", CHANGES, ids=[c[0] for c in CHANGES])
def test_every_spec_field_reaches_the_files(spec: EngineBuildSpec, field: str, value: object,
                                            expect: list[tuple[str, str]]) -> None:
    if field == "max_input_len":
        spec = dataclasses.replace(spec, max_output_len=408)
    before = {"whisper_bls": bls_config(spec, ServingConfig()),
              "tensorrt_llm": llm_config(spec, ServingConfig(), "/opt/ml/model")}
    changed = dataclasses.replace(spec, **{field: value})
    after = {"whisper_bls": bls_config(changed, ServingConfig()),
             "tensorrt_llm": llm_config(changed, ServingConfig(), "/opt/ml/model")}
    for model, snippet in expect:
        assert snippet in after[model], (model, snippet)
    assert all(_parse(t) for t in after.values())
    assert before != after


def test_kv_cache_size_follows_the_limits(spec: EngineBuildSpec) -> None:
    spec = dataclasses.replace(spec, max_batch=8, max_beam=2, max_input_len=16, max_output_len=200)
    llm = _parse(llm_config(spec, ServingConfig(), "/m"))
    assert llm.parameters["max_tokens_in_paged_kv_cache"].string_value == str(8 * 2 * 216)
    assert llm.parameters["max_attention_window_size"].string_value == "216"


def test_serving_config_reaches_the_files(spec: EngineBuildSpec) -> None:
    serving = ServingConfig(kv_cache_free_gpu_mem_fraction=0.7, cross_kv_cache_fraction=0.4, bls_instances=3,
                            max_queue_delay_us=2500)
    bls = _parse(bls_config(spec, serving))
    llm = _parse(llm_config(spec, serving, "/m"))
    assert bls.instance_group[0].count == 3 and bls.dynamic_batching.max_queue_delay_microseconds == 2500
    assert llm.parameters["kv_cache_free_gpu_mem_fraction"].string_value == "0.7"
    assert llm.parameters["cross_kv_cache_fraction"].string_value == "0.4"


def test_written_repository(tmp_path: Path, spec: EngineBuildSpec, tokenizer_json: Path,
                            mel_filters_128: np.ndarray) -> None:
    repo = write_repository(tmp_path / "triton", spec, model_root="/srv/model", tokenizer_json=tokenizer_json,
                            mel_filters=mel_filters_128)
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == ["tensorrt_llm/1/.keep", "tensorrt_llm/config.pbtxt", "whisper_bls/1/bls_features.py",
                     "whisper_bls/1/mel_filters.npy", "whisper_bls/1/model.py", "whisper_bls/1/tokenizer.json",
                     "whisper_bls/config.pbtxt"]
    assert "/srv/model/engines/decoder" in (repo / "tensorrt_llm" / "config.pbtxt").read_text()
    np.testing.assert_array_equal(np.load(repo / "whisper_bls" / "1" / "mel_filters.npy"), mel_filters_128)
    # The BLS model relies on its neighbour module by relative import.
    assert "from .bls_features import" in (repo / "whisper_bls" / "1" / "model.py").read_text()


def test_bad_inputs_are_refused(tmp_path: Path, spec: EngineBuildSpec, tokenizer_json: Path) -> None:
    with pytest.raises(ValueError, match="absolute"):
        write_repository(tmp_path, spec, model_root="model", tokenizer_json=tokenizer_json,
                         mel_filters=np.zeros((201, 128), np.float32))
    with pytest.raises(ValueError, match=r"\(201, 128\)"):
        write_repository(tmp_path, spec, model_root="/m", tokenizer_json=tokenizer_json,
                         mel_filters=np.zeros((201, 80), np.float32))


def test_no_number_in_the_files_that_config_did_not_give(spec: EngineBuildSpec) -> None:
    """Odd values everywhere, then every number in both files must be one of them (or a shape)."""
    import re

    spec = dataclasses.replace(spec, max_batch=13, max_beam=3, max_input_len=11, max_output_len=97)
    serving = ServingConfig(kv_cache_free_gpu_mem_fraction=0.37, cross_kv_cache_fraction=0.29, bls_instances=5,
                            max_queue_delay_us=1234)
    allowed = {"13", "3", "11", "97", str(11 + 97), str(13 * 3 * (11 + 97)), "0.37", "0.29", "5", "1234",
               "128",  # n_mels of large-v3 (from model_name)
               "1", "-1"}  # tensor dims and the single TensorRT-LLM instance
    for text in (bls_config(spec, serving), llm_config(spec, serving, "/m")):
        numbers = set(re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", text))
        assert numbers <= allowed, numbers - allowed
