"""Image: the serving container, built from the repository and copied to a named ECR repository.

``DockerImageAsset`` builds ``containers/whisper/Dockerfile`` with the repository root as the
context (the image needs ``whisper_contract`` beside the server) and publishes it to the CDK
bootstrap repository; ``cdk-ecr-deployment`` then copies it to our own repository under a
content-addressed tag. The repository's tags are MUTABLE on purpose: a re-push of the same tag
(rollback, a replaced copy resource) must succeed, and an immutable repository rejects it with
``ImageTagAlreadyExistsException`` (stack stuck in UPDATE_ROLLBACK_FAILED); a content-hash tag
re-pushed can only carry the same content (docs/infrastructure.md "ECR tags"). docs/infrastructure.md holds the evidence for choosing
cdk-ecr-deployment over cdk-docker-image-deployment.

Provenance: SageMaker accepts only Docker v2 image manifests: it rejects OCI image indexes
(which BuildKit produces when it attaches its default provenance attestation) and OCI
manifests. aws-cdk-lib 2.275 has no DockerImageAsset property for ``--provenance`` (the CLI's
``docker build`` command line has no such flag either), so ``make deploy`` sets
``BUILDX_NO_DEFAULT_ATTESTATIONS=1`` (Docker's documented switch); the asset pins one platform
and asks for the docker exporter with Docker media types (``--output=type=docker,
oci-mediatypes=false``); the copy step also selects the single amd64 manifest.
"""

from __future__ import annotations

from pathlib import Path

import cdk_ecr_deployment as ecr_deploy
from aws_cdk import ArnFormat, CfnOutput, IgnoreMode, RemovalPolicy, Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from stacks.config import EnvConfig
from stacks.props import StackProps, init_stack
from whisper_constructs.common import acknowledge, nag_region_account

REPO_ROOT = Path(__file__).resolve().parent.parent
# The build context is the repository root; only these paths may reach the image (and the
# asset hash), so a change to tests or docs does not rebuild a multi-gigabyte image.
CONTEXT_ALLOW = ("containers/whisper", "whisper_contract")
ASSET_EXCLUDE = ["*", *(f"!{p}" for p in CONTEXT_ALLOW), "**/__pycache__", "**/*.pyc"]
PLATFORM = assets.Platform.LINUX_AMD64
DOCKER_OUTPUTS = ("type=docker,oci-mediatypes=false",)


class ImageStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, cfg: EnvConfig, key: kms.IKey,
                 removal_policy: RemovalPolicy, props: StackProps) -> None:
        init_stack(self, scope, construct_id, props)
        build_args: dict[str, str] = {}
        dockerfile = cfg.serving_image.dockerfile or ""
        assert dockerfile, f"packaging byoc always has a Dockerfile ({cfg.serving_image})"
        if cfg.backend == "triton":
            assert cfg.engine_build is not None  # config validation requires it for triton
            build_args["TRITON_IMAGE"] = cfg.engine_build.build_image

        self.asset = assets.DockerImageAsset(
            self, "ServingImage",
            directory=str(REPO_ROOT),
            file=dockerfile,
            build_args=build_args or None,
            platform=PLATFORM,
            # Docker (v2 schema 2) media types: SageMaker also rejects OCI image manifests, which a
            # containerd image store produces by default.
            outputs=list(DOCKER_OUTPUTS),
            exclude=ASSET_EXCLUDE,
            ignore_mode=IgnoreMode.DOCKER,  # .dockerignore semantics: '*' then '!dir' is an allow-list
            display_name=f"whisper-serving-{cfg.name}",
        )
        self.repository = ecr.Repository(
            self, "Repository",
            repository_name=f"whisper-sagemaker/{cfg.name}",
            image_tag_mutability=ecr.TagMutability.MUTABLE,  # see the module docstring
            image_scan_on_push=True,
            encryption=ecr.RepositoryEncryption.KMS,
            encryption_key=key,
            removal_policy=removal_policy,
            empty_on_delete=False,
            lifecycle_rules=[ecr.LifecycleRule(description="keep the 20 newest images", max_image_count=20)],
        )
        # Content-addressed tag: a new image gets a new tag, an unchanged one is not copied again.
        self.image_tag = self.asset.asset_hash[:32]
        self.image_uri = self.repository.repository_uri_for_tag(self.image_tag)

        # cdk-ecr-deployment adds ecr:*-style actions and s3:GetObject on "*" to whatever role it
        # runs with; a role that ignores policy additions keeps only the statements below.
        copy_role = iam.Role(self, "CopyRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description="Copies the serving image from the CDK asset repository to ours")
        copy_role.add_to_policy(iam.PolicyStatement(
            sid="PullFromAssetRepository",
            actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            resources=[self.asset.repository.repository_arn]))
        copy_role.add_to_policy(iam.PolicyStatement(
            sid="PushToOurRepository",
            actions=["ecr:BatchGetImage", "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload",
                     "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage"],
            resources=[self.repository.repository_arn]))
        copy_role.add_to_policy(iam.PolicyStatement(sid="EcrLogin", actions=["ecr:GetAuthorizationToken"],
                                                    resources=["*"]))
        copy_role.add_to_policy(iam.PolicyStatement(
            sid="WriteLogs", actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[self.format_arn(service="logs", resource="log-group", resource_name="/aws/lambda/*",
                                       arn_format=ArnFormat.COLON_RESOURCE_NAME)],
        ))
        self.copy = ecr_deploy.ECRDeployment(
            self, "CopyImage",
            src=ecr_deploy.DockerImageName(self.asset.image_uri),
            dest=ecr_deploy.DockerImageName(self.image_uri),
            role=copy_role.without_policy_updates(),
            image_arch=["amd64"],
            copy_image_index=False,  # a single-platform manifest: what SageMaker accepts
        )
        acknowledge(copy_role, "AwsSolutions-IAM5[Resource::*]", "ecr:GetAuthorizationToken has no resource-level permissions; every other ECR action is scoped "
                   "to the CDK asset repository and ours",
        )
        region, account = nag_region_account(self)
        acknowledge(copy_role, f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:{region}:{account}:log-group:/aws/lambda/*]", "cdk-ecr-deployment creates its singleton Lambda's log group on first run under a name we cannot "
                   "know at synth; scoped to Lambda log groups of this account and region",
        )
        CfnOutput(self, "ImageUri", value=self.image_uri)
        CfnOutput(self, "RepositoryName", value=self.repository.repository_name)

