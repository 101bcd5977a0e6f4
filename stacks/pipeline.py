"""Ingestion and completion: the two queue-fed Lambdas around the endpoint.

Ingestion: input bucket ``ObjectCreated`` -> S3 event notification -> SQS (+DLQ) -> trigger
Lambda (``lambda/submit``) -> ``InvokeEndpointAsync``.
Completion: endpoint success and error topics -> SQS (+DLQ; raw message delivery, so each SQS
body is SageMaker's notification JSON) -> completion Lambda (``lambda/complete``) -> transcripts
or ``<key>.error.json`` in the output bucket.
"""

from __future__ import annotations

from aws_cdk import Aws, CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from constructs import Construct

from stacks.config import EnvConfig
from stacks.props import StackProps, init_stack
from whisper_constructs.common import acknowledge, bucket_ref, s3_objects_finding
from whisper_constructs.queue_function import QueueFedFunction
from whisper_contract import env as env_names
from whisper_contract import keys


def _function_kwargs(cfg: EnvConfig, key: kms.IKey, ops_topic: sns.ITopic,
                     removal_policy: RemovalPolicy) -> dict[str, object]:
    return dict(key=key, alarm_topic=ops_topic, log_retention_days=cfg.log_retention_days,
                removal_policy=removal_policy, max_concurrency=cfg.lambda_max_concurrency,
                dlq_alarm_threshold=cfg.dlq_alarm_threshold, tracing=cfg.tracing)


def _acknowledge_common(fn: QueueFedFunction, tracing: bool) -> None:
    if tracing:
        acknowledge(fn.role, "AwsSolutions-IAM5[Resource::*]", "X-Ray PutTraceSegments/PutTelemetryRecords have no resource-level permissions",
        )


class IngestionStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, cfg: EnvConfig, key: kms.IKey,
                 endpoint_name: str, ops_topic: sns.ITopic, removal_policy: RemovalPolicy, props: StackProps) -> None:
        init_stack(self, scope, construct_id, props)
        input_bucket = bucket_ref(self, cfg.bucket_name("input"), "InputBucket")
        output_bucket = bucket_ref(self, cfg.bucket_name("output"), "OutputBucket")
        self.trigger = QueueFedFunction(
            self, "Trigger",
            handler_name="submit",
            description=f"whisper {cfg.name}: submit each uploaded audio file to the async endpoint",
            environment={
                env_names.ENDPOINT_NAME: endpoint_name,
                env_names.OUTPUT_BUCKET: output_bucket.bucket_name,
                env_names.DEFAULT_OPTIONS: cfg.default_options,
                env_names.INVOCATION_TIMEOUT_S: str(cfg.invocation_timeout_s),
                env_names.REQUEST_TTL_S: str(cfg.request_ttl_s),
            },
            timeout=Duration.seconds(60),
            **_function_kwargs(cfg, key, ops_topic, removal_policy),  # type: ignore[arg-type]
        )
        # The bucket is referenced by name: the notification resource lives in this stack and
        # Storage does not depend on the queue (no cross-stack cycle).
        input_bucket.add_event_notification(s3.EventType.OBJECT_CREATED, s3n.SqsDestination(self.trigger.queue))

        add = self.trigger.role.add_to_policy
        # HeadObject on a versioned key needs GetObjectVersion.
        add(iam.PolicyStatement(sid="ReadInput", actions=["s3:GetObject", "s3:GetObjectVersion"],
                                resources=[input_bucket.arn_for_objects("*")]))
        # Without ListBucket S3 answers 403 instead of 404 for a missing key: a first-time job
        # lookup or a deleted upload would then retry into the DLQ instead of being handled.
        add(iam.PolicyStatement(sid="TellMissingFromForbidden", actions=["s3:ListBucket"],
                                resources=[input_bucket.bucket_arn, output_bucket.bucket_arn]))
        add(iam.PolicyStatement(sid="JobRecords", actions=["s3:GetObject", "s3:PutObject"],
                                resources=[output_bucket.arn_for_objects(keys.JOBS_PREFIX + "*")]))
        add(iam.PolicyStatement(sid="ErrorRecords", actions=["s3:PutObject"],
                                resources=[output_bucket.arn_for_objects("*" + keys.ERROR_SUFFIX)]))
        add(_replace_outputs(output_bucket))
        add(iam.PolicyStatement(sid="UseDataKey", actions=["kms:Decrypt", "kms:GenerateDataKey"],
                                resources=[key.key_arn]))
        add(iam.PolicyStatement(
            sid="InvokeEndpoint", actions=["sagemaker:InvokeEndpointAsync"],
            resources=[f"arn:{Aws.PARTITION}:sagemaker:{Aws.REGION}:{Aws.ACCOUNT_ID}:endpoint/{endpoint_name}"]))
        _acknowledge_common(self.trigger, cfg.tracing)
        for finding, reason in (
            (s3_objects_finding(cfg.bucket_name("input"), "*"), "the trigger reads whichever object was uploaded"),
            (s3_objects_finding(cfg.bucket_name("output"), keys.JOBS_PREFIX + "*"),
             "job records are named by inference id under _jobs/"),
            (s3_objects_finding(cfg.bucket_name("output"), "*" + keys.ERROR_SUFFIX),
             "rejected inputs get <input key>.error.json next to where their transcript would be"),
            *_replace_outputs_findings(cfg),
        ):
            acknowledge(self.trigger.role, finding, reason)
        self._acknowledge_notification_handler()
        CfnOutput(self, "IngestQueueUrl", value=self.trigger.queue.queue_url)
        CfnOutput(self, "IngestDlqUrl", value=self.trigger.dlq.queue_url)
        CfnOutput(self, "TriggerFunctionName", value=self.trigger.function.function_name)

    def _acknowledge_notification_handler(self) -> None:
        """CDK's own singleton that writes the bucket notification configuration."""
        handler = self.node.try_find_child("BucketNotificationsHandler050a0587b7544547bf325f094a3db834")
        if handler is None:
            return
        acknowledge(handler, "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                         "AWSLambdaBasicExecutionRole]", "CDK's BucketNotificationsHandler (runs only at deploy) uses the basic execution "
                             "role; its role is not configurable")
        acknowledge(handler, "AwsSolutions-IAM5[Resource::*]", "CDK's BucketNotificationsHandler needs s3:PutBucketNotification; CDK grants it on *")


class CompletionStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, cfg: EnvConfig, key: kms.IKey,
                 success_topic: sns.ITopic, error_topic: sns.ITopic, ops_topic: sns.ITopic,
                 removal_policy: RemovalPolicy, props: StackProps) -> None:
        init_stack(self, scope, construct_id, props)
        input_bucket = bucket_ref(self, cfg.bucket_name("input"), "InputBucket")
        output_bucket = bucket_ref(self, cfg.bucket_name("output"), "OutputBucket")
        self.completer = QueueFedFunction(
            self, "Completer",
            handler_name="complete",
            description=f"whisper {cfg.name}: write transcripts or error records for finished inferences",
            environment={env_names.OUTPUT_BUCKET: output_bucket.bucket_name},
            timeout=Duration.seconds(120),
            **_function_kwargs(cfg, key, ops_topic, removal_policy),  # type: ignore[arg-type]
        )
        # One queue for both outcomes: the handler tells them apart by invocationStatus.
        for topic in (success_topic, error_topic):
            topic.add_subscription(subs.SqsSubscription(self.completer.queue, raw_message_delivery=True))

        add = self.completer.role.add_to_policy
        add(iam.PolicyStatement(
            sid="ReadAsyncResultsAndJobs", actions=["s3:GetObject"],
            resources=[output_bucket.arn_for_objects("_async/*"),
                       output_bucket.arn_for_objects(keys.JOBS_PREFIX + "*")]))
        add(iam.PolicyStatement(sid="WriteResults", actions=["s3:PutObject"],
                                resources=[output_bucket.arn_for_objects("*")]))
        add(_replace_outputs(output_bucket))
        add(iam.PolicyStatement(sid="HeadInput", actions=["s3:GetObject"],
                                resources=[input_bucket.arn_for_objects("*")]))
        add(iam.PolicyStatement(sid="TellMissingFromForbidden", actions=["s3:ListBucket"],
                                resources=[input_bucket.bucket_arn, output_bucket.bucket_arn]))
        add(iam.PolicyStatement(sid="UseDataKey", actions=["kms:Decrypt", "kms:GenerateDataKey"],
                                resources=[key.key_arn]))
        _acknowledge_common(self.completer, cfg.tracing)
        for finding, reason in (
            (s3_objects_finding(cfg.bucket_name("output"), "*"),
             "transcripts are written next to the input's key, which can be any key"),
            (s3_objects_finding(cfg.bucket_name("output"), "_async/*"),
             "SageMaker names async outputs and failures itself under _async/"),
            (s3_objects_finding(cfg.bucket_name("output"), keys.JOBS_PREFIX + "*"),
             "job records are named by inference id under _jobs/"),
            *_replace_outputs_findings(cfg),
            (s3_objects_finding(cfg.bucket_name("input"), "*"),
             "the input's version and ETag (HeadObject) go into the transcript JSON"),
        ):
            acknowledge(self.completer.role, finding, reason)
        CfnOutput(self, "CompletionQueueUrl", value=self.completer.queue.queue_url)
        CfnOutput(self, "CompletionDlqUrl", value=self.completer.dlq.queue_url)
        CfnOutput(self, "CompleterFunctionName", value=self.completer.function.function_name)


def _replace_outputs(output_bucket: s3.IBucket) -> iam.PolicyStatement:
    """Both Lambdas delete a key's earlier outputs (other formats, a stale error record) so
    that its output names hold exactly the latest job's files: DeleteObject on those
    suffixes only (DeleteObjects checks s3:DeleteObject per key)."""
    return iam.PolicyStatement(sid="ReplaceOutputs", actions=["s3:DeleteObject"],
                               resources=[output_bucket.arn_for_objects("*" + suffix) for suffix in keys.OUTPUT_SUFFIXES])


def _replace_outputs_findings(cfg: EnvConfig) -> list[tuple[str, str]]:
    return [(s3_objects_finding(cfg.bucket_name("output"), "*" + suffix),
             "a key's earlier outputs are deleted when a newer upload of it finishes") for suffix in keys.OUTPUT_SUFFIXES]
