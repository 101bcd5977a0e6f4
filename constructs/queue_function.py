"""An SQS queue with a dead-letter queue feeding one Lambda function.

Used by both ends of the pipeline (trigger and completion): retries come from SQS, a message
that keeps failing lands in the DLQ (alarmed), and ``ReportBatchItemFailures`` means one bad
record is retried alone instead of re-running its whole batch. Nothing is dropped silently.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from whisper_constructs.common import retention
from whisper_constructs.lambda_asset import stage_lambda_asset

# Newest Python runtime aws-cdk-lib 2.275 knows; the handlers use only 3.11+ features.
RUNTIME = lambda_.Runtime.PYTHON_3_14
MAX_RECEIVE_COUNT = 5  # attempts before a message moves to the DLQ
DLQ_RETENTION = Duration.days(14)  # SQS maximum: time to inspect and redrive


class QueueFedFunction(Construct):
    """``queue`` (-> ``dlq`` after ``MAX_RECEIVE_COUNT`` failures) -> ``function``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        handler_name: str,
        description: str,
        environment: dict[str, str],
        key: kms.IKey,
        alarm_topic: sns.ITopic,
        log_retention_days: int,
        removal_policy: RemovalPolicy,
        max_concurrency: int,
        dlq_alarm_threshold: int,
        timeout: Duration,
        batch_size: int = 10,
        tracing: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        # The queues use the key by ARN: CDK's S3-notification and SNS-subscription helpers then
        # cannot add their unconditioned s3/sns.amazonaws.com statements to the key policy, so the
        # Storage stack's statement (limited by aws:SourceAccount) is the only one for those services.
        queue_key = kms.Key.from_key_arn(self, "QueueKey", key.key_arn)
        self.dlq = sqs.Queue(
            self, "Dlq",
            encryption=sqs.QueueEncryption.KMS, encryption_master_key=queue_key,
            retention_period=DLQ_RETENTION, enforce_ssl=True,
        )
        self.queue = sqs.Queue(
            self, "Queue",
            encryption=sqs.QueueEncryption.KMS, encryption_master_key=queue_key,
            # AWS guidance for Lambda event sources: at least 6x the function timeout.
            visibility_timeout=Duration.seconds(timeout.to_seconds() * 6),
            retention_period=DLQ_RETENTION,
            enforce_ssl=True,
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dlq, max_receive_count=MAX_RECEIVE_COUNT),
        )
        self.log_group = logs.LogGroup(
            self, "Logs",
            retention=retention(log_retention_days),
            encryption_key=key, removal_policy=removal_policy,
        )
        # Our own role: only this log group, no AWSLambdaBasicExecutionRole (which allows every group).
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description=f"{description} (least privilege)")
        self.log_group.grant_write(self.role)

        self.function = lambda_.Function(
            self, "Function",
            description=description,
            runtime=RUNTIME,
            architecture=lambda_.Architecture.ARM_64,
            handler="handler.handler",
            code=lambda_.Code.from_asset(str(stage_lambda_asset(handler_name))),
            timeout=timeout,
            memory_size=512,
            environment=environment,
            role=self.role,
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE if tracing else lambda_.Tracing.DISABLED,
        )
        self.function.add_event_source(sources.SqsEventSource(
            self.queue, batch_size=batch_size, report_batch_item_failures=True,
            # Caps concurrent executions without reserved concurrency (which fails to deploy on
            # accounts with the default 10-execution limit).
            max_concurrency=max_concurrency,
        ))
        self.dlq_alarm = cw.Alarm(
            self, "DlqAlarm",
            alarm_description=f"Messages in the dead-letter queue of: {description}. Inspect and redrive.",
            metric=self.dlq.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(1), statistic="Maximum"),
            threshold=dlq_alarm_threshold,
            evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )
        self.dlq_alarm.add_alarm_action(cw_actions.SnsAction(alarm_topic))

