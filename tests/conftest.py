"""Fixtures shared by every test folder: the bundled real models, one moto server, the DLC
tarball, and GPU test skipping."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """One moto server (S3/SNS/SQS/...) in server mode on loopback, shared by the session;
    tests keep apart by naming their own buckets and queues."""
    from moto.server import ThreadedMotoServer

    from whisper_local.net import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def tiny_en_dir() -> Path:
    from whisper_server.bundled import bundled_model_dir

    return bundled_model_dir("tiny.en")


@pytest.fixture(scope="session")
def base_dir() -> Path:
    from whisper_server.bundled import bundled_model_dir

    return bundled_model_dir("base")


@pytest.fixture(scope="session")
def dlc_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make package-dlc`` once per session (tiny.en, fast compression), as a user runs it."""
    out = tmp_path_factory.mktemp("dlc-build")
    repo = Path(__file__).resolve().parent.parent
    subprocess.run(["make", "-s", "package-dlc", f"DLC_OUT={out}", "DLC_FLAGS=--compresslevel 1"],
                   cwd=repo, check=True, capture_output=True, timeout=300)
    return out / "model.tar.gz"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where CUDA is present (the device machine)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing or broken: no GPU tests
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
