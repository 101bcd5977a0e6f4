"""Storage: the KMS key, the input/output/model buckets, the access-log bucket, the ops topic.

The stateful part of the service: everything here follows the environment's removal policy
(dev destroys, prod retains), so tearing down compute never loses audio or transcripts.
"""

from __future__ import annotations

from aws_cdk import Aws, CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from constructs import Construct

from stacks.config import EnvConfig
from stacks.props import StackProps, init_stack
from whisper_contract import keys


class StorageStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, cfg: EnvConfig, props: StackProps) -> None:
        init_stack(self, scope, construct_id, props)
        # Retained resources have fixed names (buckets, the repository, the endpoint log group). A
        # plain Retain would keep them after a failed first create too, and every retry would then
        # fail with "already exists"; RETAIN_ON_UPDATE_OR_DELETE (DeletionPolicy RetainExceptOnCreate,
        # CloudFormation User Guide "DeletionPolicy attribute") deletes what a failed create made.
        removal = RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE if cfg.retain else RemovalPolicy.DESTROY
        self.removal_policy = removal

        self.key = kms.Key(
            self, "Key",
            description=f"whisper {cfg.name}: buckets, queues, topics, logs, ECR, async outputs",
            enable_key_rotation=True,
            removal_policy=removal,
            pending_window=Duration.days(30 if cfg.retain else 7),
        )
        self._allow_services_to_use_key()

        self.access_logs = s3.Bucket(
            self, "AccessLogs", bucket_name=cfg.bucket_name("access-logs"),
            # Server access logging can only deliver to SSE-S3 buckets, not SSE-KMS.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs", expiration=Duration.days(365))],
            removal_policy=removal,
            auto_delete_objects=False,
        )
        common = dict(
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,  # one KMS call per bucket key, not per object: cost
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs,
            removal_policy=removal,
        )
        abort_uploads = s3.LifecycleRule(id="abort-incomplete-uploads",
                                         abort_incomplete_multipart_upload_after=Duration.days(7))
        self.input_bucket = s3.Bucket(
            self, "Input", bucket_name=cfg.bucket_name("input"), server_access_logs_prefix="input/",
            lifecycle_rules=[abort_uploads,
                             s3.LifecycleRule(id="expire-audio", expiration=Duration.days(cfg.input_expiration_days))],
            **common,  # type: ignore[arg-type]
        )
        output_rules = [
            abort_uploads,
            # SageMaker's raw async outputs/failures and job records are working files: the
            # completion Lambda turns them into transcripts and error records.
            s3.LifecycleRule(id="expire-async-raw", prefix="_async/", expiration=Duration.days(7)),
            s3.LifecycleRule(id="expire-job-records", prefix=keys.JOBS_PREFIX, expiration=Duration.days(30)),
        ]
        if cfg.output_expiration_days:
            output_rules.append(s3.LifecycleRule(id="expire-transcripts",
                                                 expiration=Duration.days(cfg.output_expiration_days)))
        self.output_bucket = s3.Bucket(self, "Output", bucket_name=cfg.bucket_name("output"),
                                       server_access_logs_prefix="output/",
                                       lifecycle_rules=output_rules, **common)  # type: ignore[arg-type]
        self.model_bucket = s3.Bucket(
            self, "Models", bucket_name=cfg.bucket_name("models"), server_access_logs_prefix="models/",
            versioned=True,
            lifecycle_rules=[abort_uploads, s3.LifecycleRule(
                id="expire-old-versions", noncurrent_version_expiration=Duration.days(cfg.model_noncurrent_days))],
            **common,  # type: ignore[arg-type]
        )

        # Alarms from every stack go here; subscribers come from config.
        self.ops_topic = sns.Topic(self, "OpsTopic", display_name=f"whisper {cfg.name} operations",
                                   master_key=self.key, enforce_ssl=True)
        # enforce_ssl gives the topic a resource policy, which replaces SNS's default one: say
        # explicitly that this account's CloudWatch alarms may publish.
        self.ops_topic.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowThisAccountsAlarms",
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["sns:Publish"],
            resources=[self.ops_topic.topic_arn],
            conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                        "ArnLike": {"aws:SourceArn": f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:{Aws.ACCOUNT_ID}:alarm:*"}},
        ))
        for email in cfg.alarm_emails:
            self.ops_topic.add_subscription(subs.EmailSubscription(email))

        for name, value in (
            ("InputBucketName", self.input_bucket.bucket_name),
            ("OutputBucketName", self.output_bucket.bucket_name),
            ("ModelBucketName", self.model_bucket.bucket_name),
            ("OpsTopicArn", self.ops_topic.topic_arn),
            ("KeyArn", self.key.key_arn),
        ):
            CfnOutput(self, name, value=value)

    def _allow_services_to_use_key(self) -> None:
        """AWS services that encrypt with the key on our behalf, limited to this account.

        S3 notifications and SNS write to KMS-encrypted queues, CloudWatch alarms publish to the
        encrypted ops topic, and CloudWatch Logs encrypts the log groups.
        """
        same_account = {"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}}
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowAwsServicesInThisAccount",
            principals=[iam.ServicePrincipal("s3.amazonaws.com"), iam.ServicePrincipal("sns.amazonaws.com")],
            actions=["kms:GenerateDataKey*", "kms:Decrypt"],
            resources=["*"],  # in a key policy, "*" means this key
            conditions=same_account,
        ))
        # AWS's documented statement for alarms publishing to an encrypted topic has no condition
        # (no evidence that CloudWatch passes aws:SourceAccount to KMS); the topic policy below
        # limits who may publish.
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudWatchAlarmsToPublishEncrypted",
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            actions=["kms:GenerateDataKey*", "kms:Decrypt"],
            resources=["*"],
        ))
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudWatchLogsForThisAccountsLogGroups",
            principals=[iam.ServicePrincipal(f"logs.{Aws.REGION}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],
            conditions={"ArnLike": {
                "kms:EncryptionContext:aws:logs:arn": f"arn:{Aws.PARTITION}:logs:{Aws.REGION}:{Aws.ACCOUNT_ID}:log-group:*"
            }},
        ))
