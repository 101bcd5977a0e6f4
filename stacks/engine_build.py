"""Engine build: a CodeBuild GPU project that compiles TensorRT-LLM engines into the model bucket.

TensorRT-LLM engines run only on the GPU architecture that built them, so the build GPU must
match the serving family: CodeBuild's on-demand ``LINUX_GPU_CONTAINER`` + ``BUILD_GENERAL1_SMALL``
is one A10G (sm86), the GPU of ml.g5. Config validation refuses any other pairing, and the
compute type is always set explicitly (CDK's GPU images default to LARGE = 4x V100, sm70).

The build image comes from config (e.g. an NGC TensorRT-LLM/Triton image, ideally mirrored
to ECR); the source is a zip of ``containers/engine_build/`` and ``whisper_contract/`` at their
repository paths; the buildspec is ``containers/engine_build/buildspec.yml``; the build settings
are ``EngineBuildSpec.to_env()``, the same dataclass the build script reads back.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml  # type: ignore[import-untyped]  # (no types-PyYAML in the pinned set)
from aws_cdk import Aws, CfnOutput, CfnRule, CfnRuleAssertion, Duration, Fn, IgnoreMode, RemovalPolicy, Stack, Token
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from stacks.config import CODEBUILD_GPU_REGIONS, EnvConfig
from stacks.props import StackProps, init_stack
from whisper_constructs.common import acknowledge, bucket_ref, nag_region_account, retention, s3_objects_finding

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILDSPEC = REPO_ROOT / "containers" / "engine_build" / "buildspec.yml"
# What containers/engine_build/buildspec.yml runs: the build package, the Triton backend and the
# evaluation helpers it verifies the engines with, the contract, and the verification clips.
SOURCE_ALLOW = ("containers/engine_build", "containers/whisper/whisper_server", "whisper_contract", "whisper_eval",
                "tests/data/audio", "whisper_build", "pyproject.toml")
SOURCE_EXCLUDE = ["*", *(f"!{p}" for p in SOURCE_ALLOW), "**/__pycache__", "**/*.pyc"]
GPU_ENVIRONMENT = "LINUX_GPU_CONTAINER"
_ECR_IMAGE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/([^:@]+)[:@](.+)$")


class EngineBuildStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, cfg: EnvConfig, key: kms.IKey,
                 removal_policy: RemovalPolicy, props: StackProps) -> None:
        init_stack(self, scope, construct_id, props)
        model_bucket = bucket_ref(self, cfg.bucket_name("models"), "ModelBucket")
        eb = cfg.engine_build
        assert eb is not None
        spec = cfg.engine_spec(model_bucket.bucket_name)

        source = s3_assets.Asset(self, "Source", path=str(REPO_ROOT), exclude=SOURCE_EXCLUDE,
                                 ignore_mode=IgnoreMode.DOCKER)
        self.log_group = logs.LogGroup(self, "Logs", retention=retention(cfg.log_retention_days),
                                       encryption_key=key, removal_policy=removal_policy)
        self.project = codebuild.Project(
            self, "Project",
            description=f"whisper {cfg.name}: TensorRT-LLM engines for {eb.model_name} on "
                        f"{cfg.family.gpu} ({spec.gpu_arch}) to match {cfg.instance_type}",
            source=codebuild.Source.s3(bucket=source.bucket, path=source.s3_object_key),
            build_spec=codebuild.BuildSpec.from_object(yaml.safe_load(BUILDSPEC.read_text())),
            environment=codebuild.BuildEnvironment(
                build_image=self._build_image(eb.build_image),
                compute_type=codebuild.ComputeType[cfg.codebuild_compute_type.removeprefix("BUILD_GENERAL1_")],
                privileged=False,
                environment_variables={k: codebuild.BuildEnvironmentVariable(value=v)
                                       for k, v in sorted(spec.to_env().items())},
            ),
            encryption_key=key,
            timeout=Duration.minutes(eb.timeout_minutes),
            queued_timeout=Duration.hours(8),
            concurrent_build_limit=1,  # one GPU build at a time: cost control
            logging=codebuild.LoggingOptions(cloud_watch=codebuild.CloudWatchLoggingOptions(log_group=self.log_group)),
        )
        # CDK derives the environment type from the image class; an image given by URI is a
        # LinuxBuildImage, so state the GPU environment explicitly.
        cfn = self.project.node.default_child
        assert isinstance(cfn, codebuild.CfnProject)
        cfn.add_property_override("Environment.Type", GPU_ENVIRONMENT)
        # The source zip only (not CDK's grant_read, which opens the whole asset bucket).
        self.project.add_to_role_policy(iam.PolicyStatement(
            sid="ReadSource", actions=["s3:GetObject", "s3:GetObjectVersion"],
            resources=[source.bucket.arn_for_objects(source.s3_object_key)]))
        self.project.add_to_role_policy(iam.PolicyStatement(
            sid="LocateSourceBucket", actions=["s3:GetBucketAcl", "s3:GetBucketLocation"],
            resources=[source.bucket.bucket_arn]))

        role = self.project.role
        assert role is not None
        prefix = eb.artifact_prefix.rstrip("/") + "/"
        read_prefixes = [p for p in (eb.base_model_prefix, eb.lora_prefix) if p]
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="ReadWeights", actions=["s3:GetObject"],
            resources=[model_bucket.arn_for_objects(f"{p}*") for p in read_prefixes]))
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="ListWeightsAndArtifacts", actions=["s3:ListBucket"], resources=[model_bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in read_prefixes] + [f"{prefix}*"]}}))
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="WriteArtifacts", actions=["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"],
            resources=[model_bucket.arn_for_objects(f"{prefix}*")]))
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="UseDataKey", actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[key.key_arn]))

        project_id = self.get_logical_id(cfn)
        region, account = nag_region_account(self)
        models = cfg.bucket_name("models")
        for finding, reason in [
            *((s3_objects_finding(models, f"{p}*"), "the build reads every file of the configured weights/adapter")
              for p in read_prefixes),
            (s3_objects_finding(models, f"{prefix}*"), "the build writes a new versioned artifact under this prefix"),
            ("AwsSolutions-IAM5[Action::s3:GetBucket*]", "codebuild.Source.s3 grants read on the CDK asset bucket"),
            ("AwsSolutions-IAM5[Action::s3:GetObject*]", "codebuild.Source.s3 grants read on the CDK asset bucket"),
            ("AwsSolutions-IAM5[Action::s3:List*]", "codebuild.Source.s3 grants read on the CDK asset bucket"),
            ("AwsSolutions-IAM5[Action::kms:GenerateDataKey*]", "CDK's grant for the project's artifact key"),
            ("AwsSolutions-IAM5[Action::kms:ReEncrypt*]", "CDK's grant for the project's artifact key"),
            (f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:{region}:{account}:log-group:"
             f"/aws/codebuild/<{project_id}>:*]", "streams of the project's own log group (one per build)"),
            (f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:codebuild:{region}:{account}:"
             f"report-group/<{project_id}>-*]", "CodeBuild's per-project report groups"),
            ("AwsSolutions-CB5", "TensorRT-LLM needs its own CUDA/TensorRT toolchain image (NGC); CodeBuild's "
                                 "standard images do not ship it"),
        ]:
            acknowledge(self.project, finding, reason)
        if _ECR_IMAGE.match(eb.build_image):
            acknowledge(self.project, "AwsSolutions-IAM5[Resource::*]",
                        "ecr:GetAuthorizationToken (to pull the ECR build image) has no resource-level permissions")
        if Token.is_unresolved(self.region):
            # Environment-agnostic template: config could not check the region, so CloudFormation does.
            CfnRule(self, "GpuBuildRegion", assertions=[CfnRuleAssertion(
                assert_=Fn.condition_contains(list(CODEBUILD_GPU_REGIONS), Aws.REGION),
                assert_description="CodeBuild has no LINUX_GPU_CONTAINER builds in this region; deploy the engine "
                                   f"build to one of {', '.join(CODEBUILD_GPU_REGIONS)}")])
        CfnOutput(self, "EngineBuildProjectName", value=self.project.project_name)
        CfnOutput(self, "EngineArtifactPrefix", value=model_bucket.s3_url_for_object(prefix))

    def _build_image(self, uri: str) -> codebuild.IBuildImage:
        m = _ECR_IMAGE.match(uri)
        if m:  # an ECR image: pull with the project's role (granted by from_ecr_repository)
            account, region, name, tag = m.groups()
            repo = ecr.Repository.from_repository_attributes(
                self, "BuildImageRepository", repository_name=name,
                repository_arn=self.format_arn(service="ecr", region=region, account=account,
                                               resource="repository", resource_name=name))
            return codebuild.LinuxGpuBuildImage.from_ecr_repository(repo, tag)
        return codebuild.LinuxBuildImage.from_docker_registry(uri)
