"""The model manifest contract (whisper_contract.model_manifest): where it lives, what it holds."""

from __future__ import annotations

import json

import pytest

from whisper_contract.model_manifest import ModelFile, ModelManifest, manifest_key, object_key

MANIFEST = ModelManifest(
    model_id="large-v3", backend="faster-whisper", format="ctranslate2", source="openai/whisper-large-v3",
    revision="06f233fe06e710322aca913c1bc4249a0d71fce1", quantization="float16",
    files=(ModelFile("model.bin", 3_087_284_237, "a" * 64), ModelFile("config.json", 2_394, "b" * 64)),
    created_at="2026-12-01T23:00:00Z",
)


def test_prefix_locations_hold_the_manifest_inside_so_it_reaches_opt_ml_model():
    assert manifest_key("models/faster-whisper-large-v3/") == "models/faster-whisper-large-v3/model-manifest.json"
    assert object_key("models/faster-whisper-large-v3/", "model.bin") == "models/faster-whisper-large-v3/model.bin"


def test_a_tarball_location_has_its_manifest_beside_it():
    assert manifest_key("models/dlc/model.tar.gz") == "models/dlc/model.tar.gz.model-manifest.json"
    assert object_key("models/dlc/model.tar.gz", "model.tar.gz") == "models/dlc/model.tar.gz"


def test_round_trip_sorts_files_and_ignores_fields_a_newer_tool_adds():
    data = json.loads(MANIFEST.to_json())
    assert [f["path"] for f in data["files"]] == ["config.json", "model.bin"]
    data["written_by"] = "a newer whisper-sm"
    data["files"][0]["mode"] = "0644"
    parsed = ModelManifest.from_json(json.dumps(data))
    assert parsed.files == tuple(sorted(MANIFEST.files, key=lambda f: f.path))
    assert parsed.total_bytes == 3_087_284_237 + 2_394
    assert parsed.to_json() == MANIFEST.to_json()


@pytest.mark.parametrize(("text", "problem"), [
    ("{not json", "not JSON"),
    ("[]", "not a JSON object"),
    (json.dumps({**json.loads(MANIFEST.to_json()), "schema_version": 2}), "schema_version 2 is not supported"),
    (json.dumps({k: v for k, v in json.loads(MANIFEST.to_json()).items() if k not in ("files", "revision")}),
     "missing fields: files, revision"),
    (json.dumps({**json.loads(MANIFEST.to_json()), "files": []}), "files must be a non-empty list"),
    (json.dumps({**json.loads(MANIFEST.to_json()), "files": [{"path": "model.bin"}]}), "bad files entry"),
    (json.dumps({**json.loads(MANIFEST.to_json()), "format": "gguf"}), "format must be one of"),
])
def test_a_bad_manifest_says_what_is_wrong(text, problem):
    with pytest.raises(ValueError, match=problem):
        ModelManifest.from_json(text)
