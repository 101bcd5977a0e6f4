"""moto in server mode and the fake container, for the plumbing tests of the local pipeline."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from whisper_local.net import free_port

FAKE_CONTAINER = Path(__file__).with_name("fake_container.py")


@pytest.fixture(scope="session")
def fake_container_url() -> str:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAKE_CONTAINER), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def fake_aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    return moto_url
