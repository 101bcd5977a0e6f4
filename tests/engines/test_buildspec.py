"""buildspec.yml and the build image's requirements: shape checks that catch drift."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from whisper_engines import SOURCE_PATHS

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "containers" / "engine_build"


def _commands() -> list[str]:
    spec = yaml.safe_load((BUILD / "buildspec.yml").read_text())
    assert spec["version"] == 0.2
    return [c for phase in ("install", "pre_build", "build") for c in spec["phases"][phase]["commands"]]


def test_buildspec_runs_a_dry_run_then_the_build_with_verification() -> None:
    commands = _commands()
    builds = [c for c in commands if "-m whisper_engines build" in c]
    assert len(builds) == 2 and "--dry-run" in builds[0] and "--dry-run" not in builds[1]
    assert "--tritonserver" in builds[1]  # the verification step starts a real tritonserver
    assert commands.index(builds[0]) < commands.index(builds[1])


def test_buildspec_stages_the_declared_artifact_and_only_it() -> None:
    """Packages get their import names from pyproject's mapping (whisper_build.layout), not from
    hand-written links, and the build's path is that staged folder alone."""
    commands = _commands()
    assert "python3 -m whisper_build.layout stage engine-build /tmp/pkgs --link" in commands
    assert not [c for c in commands if c.startswith("ln ")]
    assert [c for c in commands if "PYTHONPATH" in c] == ["export PYTHONPATH=/tmp/pkgs"] * 2
    # -P: the working directory (the whole source zip) is not on the path either.
    assert all("python3 -P -m whisper_engines" in c for c in commands if "-m whisper_engines" in c)
    for path in SOURCE_PATHS:
        assert (REPO / path).exists(), path


def test_build_requirements_are_pinned_and_leave_the_image_stack_alone() -> None:
    lines = [line for line in (BUILD / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", line) for line in lines)
    names = {line.split("==")[0].split("[")[0].lower() for line in lines}
    assert not names & {"torch", "transformers", "tokenizers", "numpy", "tensorrt", "tensorrt-llm"}


def test_codebuild_source_zip_holds_what_the_buildspec_needs() -> None:
    import pytest

    pytest.importorskip("aws_cdk")
    from stacks.engine_build import SOURCE_ALLOW

    assert set(SOURCE_PATHS) <= set(SOURCE_ALLOW)
