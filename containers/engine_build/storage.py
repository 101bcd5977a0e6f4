"""S3 in and out of the build: download weights, checksum and upload the artifact.

An artifact version is complete when its ``manifest.json`` exists: every other file is
uploaded first and the manifest last, and a version that already has a manifest is never
overwritten (a new build gets a new version).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from whisper_contract.engine_spec import MANIFEST_NAME, EngineManifest
from whisper_contract.model_manifest import sha256_file


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest, by POSIX relative path."""
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME}


def verify_checksums(root: Path, manifest: EngineManifest) -> list[str]:
    """Problems found (missing, extra or changed files); empty when the tree matches."""
    actual = checksums(root)
    problems = [f"missing {k}" for k in manifest.checksums if k not in actual]
    problems += [f"unexpected {k}" for k in actual if k not in manifest.checksums]
    problems += [f"changed {k}" for k, v in manifest.checksums.items() if k in actual and actual[k] != v]
    return problems


def download_prefix(s3: Any, bucket: str, prefix: str, dest: Path) -> list[Path]:
    """Every object under ``prefix`` into ``dest`` (keys relative to the prefix)."""
    prefix = prefix.rstrip("/") + "/"
    files: list[Path] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/"):
                continue
            target = dest / key[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))
            files.append(target)
    if not files:
        raise FileNotFoundError(f"nothing under s3://{bucket}/{prefix}")
    return files


def artifact_prefix(artifact_root_prefix: str, version: str) -> str:
    return f"{artifact_root_prefix.strip('/')}/{version}/"


def upload_artifact(s3: Any, artifact: Path, bucket: str, prefix: str, manifest: EngineManifest) -> list[str]:
    """Upload ``artifact`` under ``prefix``, manifest last; refuse to overwrite a finished version."""
    manifest_key = prefix + MANIFEST_NAME
    existing = s3.list_objects_v2(Bucket=bucket, Prefix=manifest_key).get("Contents", [])
    if any(o["Key"] == manifest_key for o in existing):
        raise FileExistsError(f"s3://{bucket}/{manifest_key} exists: artifact versions are never overwritten")
    problems = verify_checksums(artifact, manifest)
    if problems:
        raise ValueError("artifact does not match its manifest: " + "; ".join(problems[:10]))
    keys = []
    for rel in sorted(manifest.checksums):
        s3.upload_file(str(artifact / rel), bucket, prefix + rel)
        keys.append(prefix + rel)
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=manifest.to_json().encode(),
                  ContentType="application/json")
    keys.append(manifest_key)
    return keys
