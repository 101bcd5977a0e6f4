"""Each Lambda asset, as ``stage_lambda_asset`` builds it, holds its handler and the packages
it declares, and runs as Lambda runs it: top-level ``handler`` importing only the standard
library, boto3/botocore and the declared packages (never the container or aws_cdk)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_constructs.lambda_asset import ASSET_PACKAGES, CONTRACT_DIR, LAMBDA_SRC, stage_lambda_asset

DECLARED = {name.split(".")[0] for name in ASSET_PACKAGES}  # whisper_contract, whisper_lambdas
RUNTIME = {"boto3", "botocore"}  # in every Python Lambda runtime
# What boto3 pulls in here (brotli/certifi: urllib3's and botocore's optional extras), and
# multiprocessing's alias of the main module.
BOTO_DEPENDENCIES = {"urllib3", "dateutil", "jmespath", "s3transfer", "six", "brotli", "_brotli", "certifi",
                     "__mp_main__"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("name", ["submit", "complete"])
def test_asset_holds_the_handler_and_exactly_the_declared_packages(tmp_path, name):
    asset = stage_lambda_asset(name, tmp_path)
    files = sorted(p.relative_to(asset).as_posix() for p in asset.rglob("*") if p.is_file())
    expected = sorted(["handler.py", "whisper_lambdas/__init__.py"]
                      + [f"whisper_contract/{p.name}" for p in CONTRACT_DIR.glob("*.py")]
                      + ["whisper_contract/prices.json"]  # package data: the cost estimate's prices
                      + [f"whisper_lambdas/common/{p.name}" for p in (LAMBDA_SRC / "common").glob("*.py")])
    assert files == expected
    assert (asset / "handler.py").read_bytes() == (LAMBDA_SRC / name / "handler.py").read_bytes()
    for module in asset.rglob("*.py"):
        # The contract imports nothing of ours but itself; the rest only what is declared.
        allowed = {"whisper_contract"} if module.parent.name == "whisper_contract" else DECLARED | RUNTIME
        assert imported_roots(module) - set(sys.stdlib_module_names) <= allowed, module


# Run the handler from the asset alone: record which modules it loaded and from where.
PROBE = """
import json, sys
asset = sys.argv[1]
sys.path.insert(0, asset)
before = set(sys.modules)
import handler
result = handler.handler(json.loads(sys.argv[2]), None)
ours = {m: getattr(sys.modules[m], "__file__", None) for m in set(sys.modules) - before if m.startswith("whisper")}
roots = sorted({m.split(".")[0] for m in set(sys.modules) - before})
print(json.dumps({"result": result, "roots": roots, "ours": ours}))
"""


@pytest.mark.parametrize("name, body", [
    ("submit", json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})),
    ("complete", None),
])
def test_staged_asset_runs_importing_only_what_it_declares(tmp_path, name, body):
    asset = stage_lambda_asset(name, tmp_path)
    event = {"Records": [{"messageId": "m1", "body": body}] if body else []}
    env = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "ENDPOINT_NAME": "e", "OUTPUT_BUCKET": "o", "INPUT_BUCKET": "i"}
    # -I: no user site, no PYTHONPATH, no current dir; the editable install's finders come
    # after the path entry put first, and the files of what was imported are checked below.
    done = subprocess.run([sys.executable, "-I", "-c", PROBE, str(asset), json.dumps(event)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["result"] == {"batchItemFailures": []}
    foreign = set(out["roots"]) - set(sys.stdlib_module_names) - RUNTIME - BOTO_DEPENDENCIES - DECLARED - {"handler"}
    assert not foreign, foreign  # e.g. whisper_server, aws_cdk
    assert {m.split(".")[0] for m in out["ours"]} == DECLARED
    assert "whisper_lambdas.common" in out["ours"]
    assert all(path and path.startswith(str(asset)) for path in out["ours"].values()), out["ours"]
