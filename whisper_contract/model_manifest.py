"""What a model artifact in the model bucket contains: the manifest our upload tool writes.

``whisper-sm model`` (``make model``) uploads every model file, then this manifest, last: a
model location is complete exactly when its manifest exists and every file it lists is there
with the same size and sha256. ``make deploy`` refuses to create the endpoint before that, and
the container can check the files it was given against it. Standard library only: the CLI,
the deploy guard and the container share it.

Where it lives: a prefix location (``models/faster-whisper-large-v3/``, what SageMaker's
``ModelDataSource`` S3Prefix copies to /opt/ml/model) holds it inside, as
``<prefix>model-manifest.json``, so it reaches the container with the model; a compressed
location (``models/x/model.tar.gz``, ``ModelDataUrl``) has it beside the tarball, as
``models/x/model.tar.gz.model-manifest.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST_NAME = "model-manifest.json"
SCHEMA_VERSION = 1
# S3 user metadata on every uploaded model object: its sha256 (hex), so a re-run and the deploy
# guard can compare checksums without downloading gigabytes (x-amz-meta-sha256).
SHA256_METADATA = "sha256"
FORMATS = ("ctranslate2", "huggingface", "dlc-tarball")


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 8 MiB blocks (model files run to gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_prefix(location: str) -> bool:
    """A prefix (ends with /) is copied to /opt/ml/model as is; anything else is one tarball."""
    return location.endswith("/")


def manifest_key(location: str) -> str:
    return location + MANIFEST_NAME if is_prefix(location) else f"{location}.{MANIFEST_NAME}"


def object_key(location: str, path: str) -> str:
    """S3 key of a manifest entry: relative to the prefix, or the tarball's own key."""
    if is_prefix(location):
        return location + path
    return location.rsplit("/", 1)[0] + "/" + path if "/" in location else path


@dataclass(frozen=True)
class ModelFile:
    path: str  # POSIX path relative to the model location
    size: int
    sha256: str  # hex


@dataclass(frozen=True)
class ModelManifest:
    model_id: str  # e.g. large-v3 (the environment's model_id)
    backend: str  # faster-whisper | torch | triton: who the files were prepared for
    format: str  # one of FORMATS
    source: str  # Hugging Face repo id, or the local folder the files came from
    revision: str  # the hub commit sha ("local" for a folder)
    quantization: str  # CTranslate2 quantization, or "none" (weights as published)
    files: tuple[ModelFile, ...]
    created_at: str  # ISO-8601 UTC
    schema_version: int = SCHEMA_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["files"] = [dataclasses.asdict(f) for f in sorted(self.files, key=lambda f: f.path)]
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelManifest":
        """Parse a manifest; unknown fields are ignored (a newer tool may add some), missing ones
        and an unsupported schema raise ValueError naming what is wrong."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {data.get('schema_version')!r} is not supported (expected {SCHEMA_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in data and n != "schema_version")
        if missing:
            raise ValueError("missing fields: " + ", ".join(missing))
        raw_files = data["files"]
        if not isinstance(raw_files, list) or not raw_files:
            raise ValueError("files must be a non-empty list")
        try:
            files = tuple(ModelFile(path=str(f["path"]), size=int(f["size"]), sha256=str(f["sha256"]))
                          for f in raw_files)
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"bad files entry ({exc!r})") from None
        if data["format"] not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {data['format']!r}")
        kwargs = {n: data[n] for n in names if n != "files"}
        return cls(**{**kwargs, "files": files})
