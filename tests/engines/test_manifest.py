"""EngineManifest (whisper_contract.engine_spec): the build's record, read by the serving backend."""

from __future__ import annotations

import json

import pytest

from whisper_contract.engine_spec import EngineBuildSpec, EngineManifest


def _manifest(spec: EngineBuildSpec) -> EngineManifest:
    return EngineManifest(spec=spec, version="20261123T120000Z-abc1234", tensorrt_llm_version="0.20.0",
                          gpu_name="NVIDIA A10G", gpu_arch="sm86", git_revision="abc1234-dirty",
                          built_at="2026-11-23T12:00:00Z", model_root="/opt/ml/model",
                          checksums={"z/b": "2" * 64, "a/a": "1" * 64},
                          verification={"passed": True, "wer": 0.0, "clip": "c.opus"})


def test_round_trip_and_readable_fields(spec: EngineBuildSpec) -> None:
    manifest = _manifest(spec)
    text = manifest.to_json()
    assert EngineManifest.from_json(text) == manifest
    data = json.loads(text)
    # What the issue asks the manifest to state, readable with jq.
    assert data["spec"]["model_name"] == "large-v3" and data["spec"]["dtype"] == "float16"
    assert data["spec"]["weight_only"] == "none" and data["spec"]["max_batch"] == 16
    assert (data["spec"]["max_input_len"], data["spec"]["max_output_len"]) == (14, 434)
    assert data["spec"]["base_model_prefix"] == "hf/whisper-large-v3" and data["spec"]["lora_prefix"] == ""
    assert (data["tensorrt_llm_version"], data["gpu_arch"], data["git_revision"]) == ("0.20.0", "sm86", "abc1234-dirty")
    assert list(data["checksums"]) == ["a/a", "z/b"]  # sorted: stable diffs between versions
    assert data["schema_version"] == "1"


def test_unknown_schema_is_refused(spec: EngineBuildSpec) -> None:
    data = json.loads(_manifest(spec).to_json())
    data["schema_version"] = "2"
    with pytest.raises(ValueError, match="schema '2' is not supported"):
        EngineManifest.from_json(json.dumps(data))


def test_spec_is_validated_when_read(spec: EngineBuildSpec) -> None:
    data = json.loads(_manifest(spec).to_json())
    data["spec"]["model_name"] = "large-v2"
    with pytest.raises(ValueError, match="model_name"):
        EngineManifest.from_json(json.dumps(data))
