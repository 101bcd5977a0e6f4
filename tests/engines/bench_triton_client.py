"""Transport cost of the Triton backend: 30 s chunks through real tritonserver over gRPC to the
echo stand-in model (no decoding), so the time is the client + Triton + Python-backend overhead
that the real engines add to their own decode time.

    .venv/bin/python tests/engines/bench_triton_client.py [chunks] [in_flight]

Not a test (no test_ prefix); results go to docs/benchmarks.md.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    import pytriton
    from transformers import WhisperFeatureExtractor

    from whisper_contract.engine_spec import EngineBuildSpec, EngineManifest
    from whisper_engines.repository import ServingConfig, write_repository
    from whisper_server.backends.base import CHUNK_SAMPLES, DecodeOptions
    from whisper_server.backends.triton_backend import TritonBackend
    from whisper_server.bundled import bundled_model_dir

    chunks_n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    in_flight = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    root = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    package = Path(pytriton.__file__).resolve().parent
    shutil.copytree(package / "tritonserver", root / "dist", ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(package / "tritonserver" / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
                / "triton_python_backend_stub", root / "dist" / "backends" / "python")
    spec = EngineBuildSpec(model_name="large-v3", model_bucket="b", base_model_prefix="hf", artifact_prefix="e")
    repo = write_repository(root / "artifact" / "triton", spec, model_root="/opt/ml/model",
                            tokenizer_json=bundled_model_dir("base") / "tokenizer.json",
                            mel_filters=np.asarray(WhisperFeatureExtractor(feature_size=128).mel_filters),
                            serving=ServingConfig())
    shutil.rmtree(repo / "tensorrt_llm")
    shutil.copyfile(HERE / "standin" / "model.py", repo / "whisper_bls" / "1" / "model.py")
    (root / "artifact" / "manifest.json").write_text(EngineManifest(
        spec=spec, version="bench", tensorrt_llm_version="-", gpu_name="-", gpu_arch="sm86", git_revision="-",
        built_at="-", model_root="/opt/ml/model", checksums={}, verification={}).to_json())
    env = {"LD_LIBRARY_PATH": f"{package.parent / 'nvidia_pytriton.libs'}:{sysconfig.get_config_var('LIBDIR')}",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "WHISPER_STANDIN_LOG": str(root / "log.jsonl")}
    started = time.perf_counter()
    backend = TritonBackend.from_model_dir(root / "artifact", tritonserver=str(root / "dist" / "bin" / "tritonserver"),
                                           backend_directory=str(root / "dist" / "backends"), env=env,
                                           max_in_flight=in_flight)
    startup = time.perf_counter() - started
    chunks = [np.random.default_rng(i).standard_normal(CHUNK_SAMPLES).astype(np.float32) * 0.1
              for i in range(chunks_n)]
    options = DecodeOptions(language="en", temperatures=(0.0,))
    backend.transcribe_chunks(chunks[:4], options)  # warm-up
    started = time.perf_counter()
    out = backend.transcribe_chunks(chunks, options)
    elapsed = time.perf_counter() - started
    backend.close()
    shutil.rmtree(root, ignore_errors=True)
    assert len(out) == chunks_n and all(out)
    print(f"tritonserver startup (stand-in model): {startup:.2f} s")
    print(f"{chunks_n} chunks x 30 s, {in_flight} in flight: {elapsed:.3f} s total, "
          f"{1000 * elapsed / chunks_n:.1f} ms per chunk, {chunks_n * 30 / elapsed:.0f}x real time (transport only)")


if __name__ == "__main__":
    main()
