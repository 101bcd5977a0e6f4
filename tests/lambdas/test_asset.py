"""The handlers run as Lambda runs them: top-level ``handler`` beside a copy of whisper_contract."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ALLOWED_THIRD_PARTY = {"boto3", "botocore", "whisper_contract"}


@pytest.mark.parametrize("name", ["submit", "complete"])
def test_handler_imports_only_stdlib_boto3_and_the_contract(name):
    tree = ast.parse((REPO / "lambda" / name / "handler.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots - set(sys.stdlib_module_names) <= ALLOWED_THIRD_PARTY


@pytest.mark.parametrize("name, body", [
    ("submit", json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})),
    ("complete", None),
])
def test_staged_asset_runs_as_a_top_level_module(tmp_path, name, body):
    asset = tmp_path / name
    shutil.copytree(REPO / "whisper_contract", asset / "whisper_contract", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "lambda" / name / "handler.py", asset / "handler.py")
    event = {"Records": [{"messageId": "m1", "body": body}] if body else []}
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import handler, whisper_contract; "
            "assert whisper_contract.__file__.startswith(sys.argv[1]); "
            "print(json.dumps(handler.handler(json.loads(sys.argv[2]), None)))")
    env = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "ENDPOINT_NAME": "e", "OUTPUT_BUCKET": "o", "INPUT_BUCKET": "i"}
    # -I: no user site, no PYTHONPATH, no current dir; the editable installs' finders are
    # bypassed by the path entry put first, which the assert above checks.
    done = subprocess.run([sys.executable, "-I", "-c", code, str(asset), json.dumps(event)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"batchItemFailures": []}
