"""Build every stack of one environment into an app. ``app.py`` and the tests both call this."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from stacks.config import EnvConfig, load_env_config
from stacks.endpoint import EndpointStack
from stacks.engine_build import EngineBuildStack
from stacks.image import ImageStack
from stacks.operations import OperationsStack
from stacks.pipeline import CompletionStack, IngestionStack
from stacks.props import StackProps
from stacks.storage import StorageStack

APP_NAME = "Whisper"


@dataclass(frozen=True)
class WhisperStacks:
    storage: StorageStack
    image: ImageStack | None
    engine_build: EngineBuildStack | None
    endpoint: EndpointStack
    ingestion: IngestionStack
    completion: CompletionStack
    operations: OperationsStack

    def all(self) -> list[cdk.Stack]:
        return [s for s in (self.storage, self.image, self.engine_build, self.endpoint, self.ingestion,
                            self.completion, self.operations) if s is not None]


def config_from_app(app: cdk.App, context: Mapping[str, Any] | None = None) -> EnvConfig:
    """The EnvConfig selected by ``-c env=<name>``; account/region from the CDK CLI's environment."""
    ctx = context if context is not None else {"environments": app.node.try_get_context("environments")}
    return load_env_config(
        ctx, app.node.try_get_context("env"),
        account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION"),
    )


def build_stacks(app: cdk.App, cfg: EnvConfig, *, nag: bool = True) -> WhisperStacks:
    """All stacks of one environment."""
    env = cdk.Environment(account=cfg.account, region=cfg.region) if (cfg.account or cfg.region) else None
    prefix = f"{APP_NAME}-{cfg.name}"

    def props(part: str, description: str) -> StackProps:
        return StackProps(env=env, stack_name=f"{prefix}-{part}",
                          description=f"whisper transcription ({cfg.name}): {description}",
                          termination_protection=cfg.retain)

    storage = StorageStack(app, f"{prefix}-Storage", cfg=cfg, props=props("Storage", "KMS key, buckets, ops topic"))
    removal = storage.removal_policy
    image = None
    if cfg.packaging == "byoc":
        image = ImageStack(app, f"{prefix}-Image", cfg=cfg, key=storage.key, removal_policy=removal,
                           props=props("Image", "serving image in ECR"))
    engine = None
    if cfg.engine_build is not None:
        engine = EngineBuildStack(app, f"{prefix}-EngineBuild", cfg=cfg, key=storage.key,
                                  removal_policy=removal,
                                  props=props("EngineBuild", "TensorRT-LLM engine build on CodeBuild GPU"))
    endpoint = EndpointStack(
        app, f"{prefix}-Endpoint", cfg=cfg, key=storage.key, ops_topic=storage.ops_topic,
        removal_policy=removal,
        image_uri=image.image_uri if image else None,
        image_repository_arn=image.repository.repository_arn if image else None,
        props=props("Endpoint", "SageMaker async endpoint, scaling, alarms"),
    )
    if image is not None:
        endpoint.add_stack_dependency(image, "the image must be copied to ECR before the model is created")
    ingestion = IngestionStack(
        app, f"{prefix}-Ingestion", cfg=cfg, key=storage.key, endpoint_name=endpoint.endpoint_name, ops_topic=storage.ops_topic,
        removal_policy=removal, props=props("Ingestion", "S3 -> SQS -> trigger Lambda"),
    )
    ingestion.add_stack_dependency(endpoint, "the trigger invokes the endpoint by name")
    completion = CompletionStack(
        app, f"{prefix}-Completion", cfg=cfg, key=storage.key, success_topic=endpoint.success_topic,
        error_topic=endpoint.error_topic, ops_topic=storage.ops_topic, removal_policy=removal,
        props=props("Completion", "result topics -> SQS -> completion Lambda"),
    )
    operations = OperationsStack(
        app, f"{prefix}-Operations", cfg=cfg, endpoint_name=endpoint.endpoint_name,
        functions={"trigger": ingestion.trigger, "completion": completion.completer},
        props=props("Operations", "dashboard"),
    )
    operations.add_stack_dependency(endpoint)
    stacks = WhisperStacks(storage, image, engine, endpoint, ingestion, completion, operations)
    for stack in stacks.all()[1:]:
        stack.add_stack_dependency(storage, "buckets are referred to by name, so CloudFormation cannot infer the order")
    for stack in stacks.all():
        cdk.Tags.of(stack).add("project", "whisper-sagemaker")
        cdk.Tags.of(stack).add("environment", cfg.name)
    if nag:
        # Every acknowledgement sits next to the code it concerns (see whisper_constructs.common.acknowledge).
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return stacks
