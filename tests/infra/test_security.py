"""Whole-app checks: cdk-nag with zero unacknowledged findings, cfn-lint, IAM, encryption, snapshots."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from cfnlint.api import ManualArgs, lint

Synth = Any  # the fixture type lives in conftest.py (not importable under importlib mode)
SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("UPDATE_SNAPSHOTS") == "1"
# CDK adds DependsOn entries that a GetAtt already implies; harmless and not ours to change.
CFN_LINT_IGNORED = {"W3005"}


def templates(synth: Synth) -> Iterator[tuple[str, dict[str, Any]]]:
    for stack in synth.stacks.all():
        yield stack.stack_name, synth.template_json(stack)


def policy_statements(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        docs = []
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            docs.append(props["PolicyDocument"])
        if resource["Type"] == "AWS::IAM::Role":
            docs.extend(p["PolicyDocument"] for p in props.get("Policies", []))
        for doc in docs:
            yield from doc["Statement"]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_cdk_nag_has_zero_unacknowledged_findings_and_every_acknowledgement_has_a_reason(any_env: Synth) -> None:
    report = json.loads((any_env.outdir / "validation-report.json").read_text())
    nag = [r for r in report["pluginReports"] if r["pluginName"] == "AwsSolutions"]
    assert len(nag) == 1 and nag[0]["conclusion"] == "success" and nag[0]["violations"] == []
    for finding in nag[0]["suppressedViolations"]:
        assert len(finding["reason"]) >= 30, finding
        # IAM5 findings are acknowledged one wildcard at a time, never rule-wide.
        if finding["ruleName"].startswith("AwsSolutions-IAM5"):
            assert finding["acknowledgedId"].startswith("AwsSolutions::AwsSolutions-IAM5["), finding


@pytest.mark.parametrize("account", [None, "111111111111"])
def test_nag_acknowledgements_hold_when_the_cli_supplies_a_region(synth_variant: Any, account: str | None) -> None:
    """The CDK CLI always sets a region (us-east-1 by default), with or without an account; cdk-nag
    then prints them literally in finding ids. Synth fails on any finding that does not match."""
    synth = synth_variant("dev", {}, region="us-east-1", account=account)
    report = json.loads((synth.outdir / "validation-report.json").read_text())
    assert report["pluginReports"][0]["violations"] == []


def test_cfn_lint_finds_nothing(any_env: Synth) -> None:
    problems = []
    for name, template in templates(any_env):
        for match in lint(json.dumps(template), config=ManualArgs(regions=["us-east-1"])):
            if match.rule.id not in CFN_LINT_IGNORED:
                problems.append(f"{name}: {match.rule.id} {match.message}")
    assert problems == []


def test_no_full_access_managed_policies(any_env: Synth) -> None:
    for name, template in templates(any_env):
        text = json.dumps(template)
        assert "AmazonSageMakerFullAccess" not in text, name
        assert "FullAccess" not in text, name


def test_no_wildcard_resource_on_bucket_or_key_actions(any_env: Synth) -> None:
    for name, template in templates(any_env):
        for statement in policy_statements(template):
            if statement.get("Effect") != "Allow":
                continue
            actions = as_list(statement["Action"])
            data_actions = [a for a in actions if re.match(r"^(s3|kms):", a)]
            if data_actions and "Principal" not in statement:
                assert "*" not in as_list(statement["Resource"]), (name, statement)
            assert "*" not in actions and not any(a.endswith(":*") for a in actions), (name, statement)


def test_every_queue_topic_and_log_group_is_kms_encrypted(any_env: Synth) -> None:
    checks = {"AWS::SQS::Queue": "KmsMasterKeyId", "AWS::SNS::Topic": "KmsMasterKeyId",
              "AWS::Logs::LogGroup": "KmsKeyId"}
    seen = {kind: 0 for kind in checks}
    for name, template in templates(any_env):
        for logical_id, resource in template["Resources"].items():
            key = checks.get(resource["Type"])
            if key:
                seen[resource["Type"]] += 1
                assert key in resource["Properties"], (name, logical_id)
    assert seen["AWS::SQS::Queue"] == 4 and seen["AWS::SNS::Topic"] == 3 and seen["AWS::Logs::LogGroup"] >= 4


def test_every_lambda_role_and_queue_policy_requires_tls(any_env: Synth) -> None:
    for name, template in templates(any_env):
        for resource in template["Resources"].values():
            if resource["Type"] in ("AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy"):
                statements = resource["Properties"]["PolicyDocument"]["Statement"]
                assert any(s["Effect"] == "Deny" and "aws:SecureTransport" in json.dumps(s) for s in statements), name


def test_library_constructs_is_not_shadowed_by_our_folder() -> None:
    import constructs

    import aws_cdk as cdk
    from stacks.image import REPO_ROOT

    assert Path(constructs.__file__).resolve().is_relative_to(Path(cdk.__file__).resolve().parents[1])
    assert not Path(constructs.__file__).resolve().is_relative_to(REPO_ROOT / "constructs")
    assert constructs.Construct.__module__.startswith("constructs")
    assert not (REPO_ROOT / "constructs" / "__init__.py").exists()
    from whisper_constructs import queue_function

    assert Path(queue_function.__file__).resolve().parent == REPO_ROOT / "constructs"
    assert issubclass(queue_function.QueueFedFunction, constructs.Construct)


def test_no_resource_has_a_fixed_name_and_a_plain_retain_policy(any_env: Synth) -> None:
    """A failed first create keeps plain-Retain resources; with a fixed name every retry then fails
    with "already exists". RetainExceptOnCreate (RETAIN_ON_UPDATE_OR_DELETE) removes them."""
    retained = 0
    for name, template in templates(any_env):
        for logical_id, resource in template["Resources"].items():
            # (UpdateReplacePolicy stays Retain: CloudFormation cannot replace a custom-named resource anyway)
            policies = {resource.get("DeletionPolicy")}
            fixed = [k for k in resource.get("Properties", {}) if k.endswith("Name") and k not in (
                "DisplayName", "VariantName", "MetricName")]
            retained += "RetainExceptOnCreate" in policies
            if fixed:
                assert "Retain" not in policies, (name, logical_id, fixed)
    assert retained >= 6 if any_env.cfg.retain else retained == 0  # buckets, key, repository, log groups


def test_key_policy_statements_for_s3_and_sns_are_limited_to_this_account(any_env: Synth) -> None:
    key = next(v for v in any_env.template_json(any_env.stacks.storage)["Resources"].values()
               if v["Type"] == "AWS::KMS::Key")
    statements = [s for s in key["Properties"]["KeyPolicy"]["Statement"]
                  if {"s3.amazonaws.com", "sns.amazonaws.com"} & {p for p in as_list(s["Principal"].get("Service", []))
                                                                   if isinstance(p, str)}]
    assert statements
    for statement in statements:
        assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}, statement


def test_no_hard_coded_aws_partition(any_env: Synth) -> None:
    from stacks.image import REPO_ROOT

    for name, template in templates(any_env):
        assert '"arn:aws:' not in json.dumps(template), name
    for path in [*(REPO_ROOT / "stacks").glob("*.py"), *(REPO_ROOT / "constructs").glob("*.py"), REPO_ROOT / "app.py"]:
        assert "arn:aws:" not in path.read_text(), path


def test_engine_build_region_is_checked_by_cloudformation_when_synth_cannot(dev: Synth) -> None:
    from stacks.config import CODEBUILD_GPU_REGIONS

    rules = dev.template_json(dev.stacks.engine_build)["Rules"]
    assertion = rules["GpuBuildRegion"]["Assertions"][0]
    assert assertion["Assert"] == {"Fn::Contains": [list(CODEBUILD_GPU_REGIONS), {"Ref": "AWS::Region"}]}


# --- snapshots -----------------------------------------------------------------------------

_HASH = re.compile(r"\b[0-9a-f]{64}\b")
_TAG = re.compile(r"\b[0-9a-f]{32}\b")


def masked(template: dict[str, Any]) -> dict[str, Any]:
    """Asset hashes (and the image tag derived from one) change with every code edit; mask them."""
    text = _TAG.sub("<ASSET-TAG>", _HASH.sub("<ASSET-HASH>", json.dumps(template, sort_keys=True)))
    return json.loads(text)  # type: ignore[no-any-return]


def test_snapshot(any_env: Synth) -> None:
    """Templates match tests/infra/snapshots/<env>/; refresh with UPDATE_SNAPSHOTS=1 after a reviewed change."""
    folder = SNAPSHOTS / any_env.cfg.name
    changed, missing = [], []
    for name, template in templates(any_env):
        path = folder / f"{name}.json"
        current = masked(template)
        if UPDATE:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        elif not path.exists():
            missing.append(name)  # a missing snapshot is a failure, never silently written
        elif json.loads(path.read_text()) != current:
            changed.append(name)
    assert not missing, f"no snapshot for {missing}; review the templates, then UPDATE_SNAPSHOTS=1 pytest tests/infra"
    assert not changed, f"templates changed: {changed}; review, then UPDATE_SNAPSHOTS=1 pytest tests/infra"
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(name for name, _ in templates(any_env))
