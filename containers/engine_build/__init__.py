"""TensorRT-LLM engine builds for Whisper: LoRA merge, checkpoint conversion, trtllm-build,
Triton model repository, verification, manifest and upload (docs/engines.md)."""

# Repository paths the CodeBuild source zip must hold for buildspec.yml: this package, the
# Triton backend (verification uses the serving client), the contract, the WER helpers and
# the verification clip.
SOURCE_PATHS = (
    "containers/engine_build",
    "containers/whisper/whisper_server",
    "whisper_contract",
    "whisper_eval",
    "tests/data/audio",
)
