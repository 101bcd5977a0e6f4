"""Storage (key, buckets, ops topic) and Image (asset without provenance, immutable ECR copy)."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk.assertions import Match

from whisper_contract import keys

Synth = Any  # the fixture type lives in conftest.py (not importable under importlib mode)


def buckets(synth: Synth) -> dict[str, dict[str, Any]]:
    t = synth.template_json(synth.stacks.storage)["Resources"]
    return {k: v for k, v in t.items() if v["Type"] == "AWS::S3::Bucket"}


def test_key_rotates(any_env: Synth) -> None:
    any_env.template(any_env.stacks.storage).has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


def test_every_bucket_is_encrypted_private_and_tls_only(any_env: Synth) -> None:
    found = buckets(any_env)
    assert len(found) == 4  # input, output, models, access logs
    t = any_env.template_json(any_env.stacks.storage)["Resources"]
    policies = {v["Properties"]["Bucket"]["Ref"]: v["Properties"]["PolicyDocument"]["Statement"]
                for v in t.values() if v["Type"] == "AWS::S3::BucketPolicy"}
    for logical_id, bucket in found.items():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True}
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        assert sse["SSEAlgorithm"] in ("aws:kms", "AES256")
        deny_http = [s for s in policies[logical_id] if s["Effect"] == "Deny"
                     and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}]
        assert deny_http, f"{logical_id} is not TLS-only"


def test_data_buckets_use_the_key_and_log_access(dev: Synth) -> None:
    t = dev.template(dev.stacks.storage)
    for purpose in ("input", "output", "models"):
        t.has_resource_properties("AWS::S3::Bucket", {
            "BucketName": {"Fn::Join": ["", [f"whisper-dev-{purpose}-", {"Ref": "AWS::AccountId"}, "-",
                                             {"Ref": "AWS::Region"}]]},
            "BucketEncryption": {"ServerSideEncryptionConfiguration": [{
                "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms",
                                                  "KMSMasterKeyID": Match.any_value()},
                "BucketKeyEnabled": True}]},
            "LoggingConfiguration": {"DestinationBucketName": Match.any_value(),
                                     "LogFilePrefix": f"{purpose}/"},
        })


def test_model_bucket_is_versioned_and_lifecycles_apply(dev: Synth) -> None:
    t = dev.template(dev.stacks.storage)
    t.has_resource_properties("AWS::S3::Bucket", {
        "VersioningConfiguration": {"Status": "Enabled"},
        "LifecycleConfiguration": {"Rules": Match.array_with([Match.object_like(
            {"NoncurrentVersionExpiration": {"NoncurrentDays": 90}, "Status": "Enabled"})])},
    })
    t.has_resource_properties("AWS::S3::Bucket", {"LifecycleConfiguration": {"Rules": Match.array_with([
        Match.object_like({"ExpirationInDays": dev.cfg.input_expiration_days, "Status": "Enabled"})])}})
    t.has_resource_properties("AWS::S3::Bucket", {"LifecycleConfiguration": {"Rules": Match.array_with([
        Match.object_like({"Prefix": "_async/", "ExpirationInDays": 7}),
        Match.object_like({"Prefix": keys.JOBS_PREFIX, "ExpirationInDays": 30})])}})


def test_removal_policy_follows_the_environment(dev: Synth, prod: Synth) -> None:
    assert {b["DeletionPolicy"] for b in buckets(dev).values()} == {"Delete"}
    # Retained, except after a failed first create (fixed names: see test_security).
    assert {b["DeletionPolicy"] for b in buckets(prod).values()} == {"RetainExceptOnCreate"}
    assert prod.stacks.storage.termination_protection and not dev.stacks.storage.termination_protection


def test_ops_topic_policy_lets_this_accounts_alarms_publish_over_tls(dev: Synth) -> None:
    policy = next(v for v in dev.template_json(dev.stacks.storage)["Resources"].values()
                  if v["Type"] == "AWS::SNS::TopicPolicy")
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    allow = next(s for s in statements if s.get("Sid") == "AllowThisAccountsAlarms")
    assert allow["Principal"] == {"Service": "cloudwatch.amazonaws.com"} and allow["Action"] == "sns:Publish"
    assert set(allow["Condition"]) == {"StringEquals", "ArnLike"}
    assert any(s["Effect"] == "Deny" and "aws:SecureTransport" in json.dumps(s) for s in statements)


def test_ops_topic_is_encrypted_and_subscribes_the_config_emails(dev: Synth, prod: Synth) -> None:
    prod.template(prod.stacks.storage).has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
    prod.template(prod.stacks.storage).has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "ops@example.com"})
    dev.template(dev.stacks.storage).resource_count_is("AWS::SNS::Subscription", 0)


def test_key_policy_lets_only_this_accounts_services_use_the_key(dev: Synth) -> None:
    key = next(v for v in dev.template_json(dev.stacks.storage)["Resources"].values() if v["Type"] == "AWS::KMS::Key")
    statements = {s.get("Sid"): s for s in key["Properties"]["KeyPolicy"]["Statement"]}
    services = statements["AllowAwsServicesInThisAccount"]
    assert services["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    assert sorted(services["Principal"]["Service"]) == ["s3.amazonaws.com", "sns.amazonaws.com"]
    alarms = statements["AllowCloudWatchAlarmsToPublishEncrypted"]
    assert alarms["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert alarms["Action"] == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert "ArnLike" in statements["AllowCloudWatchLogsForThisAccountsLogGroups"]["Condition"]


# --- Image ---------------------------------------------------------------------------------

def test_image_asset_is_single_platform_from_the_whisper_dockerfile(dev: Synth) -> None:
    image = dev.stacks.image
    assert image is not None
    images = dev.asset_manifest(image)["dockerImages"]
    assert len(images) == 1
    source = next(iter(images.values()))["source"]
    assert source["dockerFile"] == "containers/whisper/Dockerfile"
    # One platform, the docker exporter with Docker media types, and (make deploy)
    # BUILDX_NO_DEFAULT_ATTESTATIONS=1: a plain v2 manifest, not an OCI index with a provenance
    # attestation. cdk-assets turns dockerOutputs into `docker build --output=<value>`.
    assert source["platform"] == "linux/amd64"
    assert source["dockerOutputs"] == ["type=docker,oci-mediatypes=false"]
    staged = dev.outdir / source["directory"]
    assert sorted(p.name for p in staged.iterdir()) == ["containers", "whisper_contract"]
    assert sorted(p.name for p in (staged / "containers").iterdir()) == ["whisper"]


def test_make_deploy_disables_buildkit_default_attestations() -> None:
    import subprocess

    from stacks.image import REPO_ROOT

    out = subprocess.run(["make", "-n", "deploy", "ENV=dev"], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "BUILDX_NO_DEFAULT_ATTESTATIONS=1" in out and "cdk deploy" in out


def test_image_is_copied_to_a_mutable_scanned_kms_repository_under_a_content_tag(dev: Synth) -> None:
    image = dev.stacks.image
    assert image is not None
    t = dev.template(image)
    t.has_resource_properties("AWS::ECR::Repository", {
        "RepositoryName": "whisper-sagemaker/dev",
        # MUTABLE: re-pushing the same content tag (rollback, a replaced copy) must not fail with
        # ImageTagAlreadyExistsException; the tag is the asset hash, so it names one content.
        "ImageTagMutability": "MUTABLE",
        "ImageScanningConfiguration": {"ScanOnPush": True},
        "EncryptionConfiguration": {"EncryptionType": "KMS", "KmsKey": Match.any_value()},
    })
    t.has_resource_properties("Custom::CDKECRDeployment", {
        "SrcImage": Match.any_value(), "DestImage": Match.any_value(), "ImageArch": "amd64",
    })
    runtimes = {r["Properties"]["Runtime"] for r in t.find_resources("AWS::Lambda::Function").values()}
    assert runtimes == {"provided.al2023"}  # cdk-ecr-deployment's Go binary; no Node.js runtime
