"""TensorRT-LLM engine builds for Whisper: LoRA merge, checkpoint conversion, trtllm-build,
Triton model repository, verification, manifest and upload (docs/engines.md)."""

# Repository paths the CodeBuild source zip must hold for buildspec.yml: the folders of the
# `engine-build` artifact (pyproject.toml: this package, the Triton backend that verification
# uses, the contract, the WER helpers), the verification clip, and what stages them by import
# name (whisper_build.layout reading pyproject.toml). tests/packaging checks this against the layout.
SOURCE_PATHS = (
    "containers/engine_build",
    "containers/whisper/whisper_server",
    "whisper_contract",
    "whisper_eval",
    "tests/data/audio",
    "whisper_build",
    "pyproject.toml",
)
