"""The PR workflow is valid and pinned, and the audit gates fail on what they must."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "pr.yml"
GATE = ROOT / "audit" / "gate.py"
ACCEPTED = ROOT / "audit" / "checkov-accepted.yaml"


def actionlint() -> str | None:
    for candidate in (ROOT / ".venv-actionlint" / "bin" / "actionlint", ROOT / ".venv-audit" / "bin" / "actionlint"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("actionlint")


def test_workflow_passes_actionlint() -> None:
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint not installed: pip install -r requirements/actionlint.txt (needs github.com)")
    run = subprocess.run([binary, "-no-color", str(WORKFLOW)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_workflow_runs_on_pull_requests_with_pinned_actions() -> None:
    text = WORKFLOW.read_text()
    flow = yaml.safe_load(text)
    assert "pull_request" in flow[True]  # YAML 1.1 reads the key `on` as True
    uses = re.findall(r"uses:\s*(\S+)", text)
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u) for u in uses), uses
    steps = [s.get("run", "") for job in flow["jobs"].values() for s in job["steps"]]
    assert any("make install" in s for s in steps) and any("make test" in s for s in steps)
    assert any("make audit" in s for s in steps) and any("cdk_diff.sh" in s for s in steps)
    assert flow["permissions"] == {"contents": "read"}


def _gate(tmp_path: Path, failed: list[dict]) -> subprocess.CompletedProcess:
    results = tmp_path / "checkov.json"
    results.write_text(json.dumps({"check_type": "cloudformation", "summary": {"passed": 3, "failed": len(failed)},
                                   "results": {"failed_checks": failed}}))
    return subprocess.run([sys.executable, str(GATE), "checkov", str(results), str(ACCEPTED)],
                          capture_output=True, text=True)


def test_checkov_gate_accepts_reviewed_findings_and_fails_new_ones(tmp_path: Path) -> None:
    accepted = {"check_id": "CKV_AWS_116", "check_name": "DLQ", "file_path": "/dev/Whisper-dev-Ingestion.template.json",
                "resource": "AWS::Lambda::Function.TriggerFunctionAD2A6013"}
    ok = _gate(tmp_path, [accepted])
    assert ok.returncode == 0, ok.stdout
    # Same check on a resource nobody reviewed; a reviewed check in the wrong environment.
    new = dict(accepted, resource="AWS::Lambda::Function.SomethingNew123")
    wrong_env = {"check_id": "CKV_AWS_370", "check_name": "isolation", "resource": "AWS::SageMaker::Model.Model",
                 "file_path": "/prod/Whisper-prod-Endpoint.template.json"}
    bad = _gate(tmp_path, [accepted, new, wrong_env])
    assert bad.returncode == 1
    assert "OPEN CKV_AWS_116" in bad.stdout and "SomethingNew123" in bad.stdout and "OPEN CKV_AWS_370" in bad.stdout


def test_nag_gate_fails_on_an_unacknowledged_finding(tmp_path: Path) -> None:
    env = tmp_path / "dev"
    env.mkdir()
    report = {"pluginReports": [{"pluginName": "AwsSolutions", "conclusion": "failure", "suppressedViolations": [],
                                 "violations": [{"ruleName": "AwsSolutions-S1", "description": "no access logs"}]}]}
    (env / "validation-report.json").write_text(json.dumps(report))
    run = subprocess.run([sys.executable, str(GATE), "nag", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 1 and "UNACKNOWLEDGED AwsSolutions-S1" in run.stdout
    report["pluginReports"][0].update(conclusion="success", violations=[])
    (env / "validation-report.json").write_text(json.dumps(report))
    run = subprocess.run([sys.executable, str(GATE), "nag", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout
