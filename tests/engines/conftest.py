"""Fixtures for the engine tooling tests: a spec, real Whisper assets, and a real tritonserver.

The tritonserver binary and Python backend come from the nvidia-pytriton wheel. Its Python
stub links the system libpython (not the venv's interpreter), so the server is started with
that interpreter's LIBDIR on LD_LIBRARY_PATH. The stub runs Python isolated (sys.flags.isolated:
PYTHONPATH is ignored) and finds its prefix from the first ``python3`` on PATH, so the venv's
bin folder goes first on PATH: the stub then reads the venv's pyvenv.cfg and imports what the
venv holds (numpy, torch), as a Triton image's system site-packages would.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from whisper_contract.engine_spec import MANIFEST_NAME, EngineBuildSpec, EngineManifest

STANDIN = Path(__file__).resolve().parent / "standin" / "model.py"


@pytest.fixture(scope="session")
def spec() -> EngineBuildSpec:
    return _spec()


@pytest.fixture(scope="session")
def mel_filters_128() -> np.ndarray:
    from transformers import WhisperFeatureExtractor

    return np.asarray(WhisperFeatureExtractor(feature_size=128).mel_filters, dtype=np.float32)


@pytest.fixture(scope="session")
def tokenizer_json(base_dir: Path) -> Path:
    return base_dir / "tokenizer.json"


@pytest.fixture(scope="session")
def triton_dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    pytriton = pytest.importorskip("pytriton")
    package = Path(pytriton.__file__).resolve().parent
    dist = tmp_path_factory.mktemp("tritonserver")
    shutil.copytree(package / "tritonserver", dist, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("python_backend_stubs"))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy(package / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                dist / "backends" / "python" / "triton_python_backend_stub")
    libs = [str(package.parent / "nvidia_pytriton.libs"), str(sysconfig.get_config_var("LIBDIR"))]
    return {
        "tritonserver": str(dist / "bin" / "tritonserver"),
        "backend_directory": str(dist / "backends"),
        "env": {"LD_LIBRARY_PATH": ":".join(libs),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])},
    }


def make_manifest(spec: EngineBuildSpec, model_root: str, **overrides: object) -> EngineManifest:
    fields: dict[str, object] = dict(
        spec=spec, version="20261123T120000Z-abc1234", tensorrt_llm_version="0.20.0",
        gpu_name="NVIDIA A10G", gpu_arch="sm86", git_revision="abc1234", built_at="2026-11-23T12:00:00Z",
        model_root=model_root, checksums={}, verification={"passed": True},
    )
    fields.update(overrides)
    return EngineManifest(**fields)  # type: ignore[arg-type]


def _spec() -> EngineBuildSpec:
    return EngineBuildSpec(model_name="large-v3", model_bucket="example-model-bucket",
                           base_model_prefix="hf/whisper-large-v3", artifact_prefix="engines/large-v3")


@pytest.fixture(scope="session")
def make_standin_artifact(tokenizer_json: Path, mel_filters_128: np.ndarray):
    """Builds an artifact whose whisper_bls config is the generated one, with the stand-in model.py.

    The tensorrt_llm model is left out: its backend ships only in NVIDIA's TensorRT-LLM image.
    """
    from whisper_engines.repository import ServingConfig, write_repository

    def make(root: Path) -> Path:
        artifact = root / "artifact"
        # One BLS instance and a 250 ms batching window, so concurrent requests visibly batch
        # (with slack for a loaded CI machine).
        serving = ServingConfig(bls_instances=1, max_queue_delay_us=250_000)
        repo = write_repository(artifact / "triton", _spec(), model_root="/opt/ml/model",
                                tokenizer_json=tokenizer_json, mel_filters=mel_filters_128, serving=serving)
        shutil.rmtree(repo / "tensorrt_llm")
        shutil.copyfile(STANDIN, repo / "whisper_bls" / "1" / "model.py")
        (artifact / MANIFEST_NAME).write_text(make_manifest(_spec(), "/opt/ml/model").to_json())
        return artifact

    return make


@pytest.fixture
def standin_artifact(tmp_path: Path, make_standin_artifact) -> Path:
    return make_standin_artifact(tmp_path)
