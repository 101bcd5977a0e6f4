"""Endpoint: the SageMaker model, async endpoint config, endpoint, scaling and its alarms.

The execution role is written statement by statement (no AmazonSageMakerFullAccess, no grant
helper that widens to ``s3:List*``): it can read the model artifact and the input audio,
write only under the output bucket's ``_async/`` prefixes, publish to the two result topics,
pull one image repository and write its own log group.
"""

from __future__ import annotations

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_sns as sns
from aws_cdk.region_info import FactName
from constructs import Construct

from stacks.config import EnvConfig
from stacks.props import StackProps, init_stack
from whisper_constructs.async_scaling import AsyncEndpointScaling
from whisper_constructs.sagemaker_metrics import VARIANT, sagemaker_metric
from whisper_constructs.common import acknowledge, bucket_ref, retention, s3_objects_finding
from whisper_contract import env as env_names
from whisper_contract import keys

DLC_REPOSITORY = "pytorch-inference"
TS_MAX_BYTES = "1000000000"  # TorchServe request/response limits: async payloads reach 1 GB
MODEL_DIR = "/opt/ml/model"


class EndpointStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cfg: EnvConfig,
        key: kms.IKey,
        ops_topic: sns.ITopic,
        removal_policy: RemovalPolicy,
        image_uri: str | None,
        image_repository_arn: str | None,
        props: StackProps,
    ) -> None:
        init_stack(self, scope, construct_id, props)
        self.cfg = cfg
        input_bucket = bucket_ref(self, cfg.bucket_name("input"), "InputBucket")
        output_bucket = bucket_ref(self, cfg.bucket_name("output"), "OutputBucket")
        model_bucket = bucket_ref(self, cfg.bucket_name("models"), "ModelBucket")
        # A fixed name lets us create the endpoint's log group (KMS, retention) before SageMaker does.
        self.endpoint_name = f"whisper-{cfg.name}"

        self.success_topic = sns.Topic(self, "SuccessTopic", master_key=key, enforce_ssl=True,
                                       display_name=f"whisper {cfg.name} async inference succeeded")
        self.error_topic = sns.Topic(self, "ErrorTopic", master_key=key, enforce_ssl=True,
                                     display_name=f"whisper {cfg.name} async inference failed")
        self.log_group = logs.LogGroup(
            self, "EndpointLogs", log_group_name=f"/aws/sagemaker/Endpoints/{self.endpoint_name}",
            retention=retention(cfg.log_retention_days), encryption_key=key, removal_policy=removal_policy,
        )

        if cfg.packaging == "dlc":
            dlc_account = self.regional_fact(FactName.DLC_REPOSITORY_ACCOUNT)
            image = f"{dlc_account}.dkr.ecr.{self.region}.{self.url_suffix}/{DLC_REPOSITORY}:{cfg.dlc_image_tag}"
            repository_arn = f"arn:{self.partition}:ecr:{self.region}:{dlc_account}:repository/{DLC_REPOSITORY}"
        else:
            assert image_uri is not None and image_repository_arn is not None
            image, repository_arn = image_uri, image_repository_arn

        self.role = iam.Role(self, "ExecutionRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                             description=f"whisper {cfg.name} endpoint execution role (least privilege)")
        self._grant(key=key, input_bucket=input_bucket, output_bucket=output_bucket, model_bucket=model_bucket,
                    repository_arn=repository_arn)

        vpc_config = None
        if cfg.vpc_only:
            vpc_config = self._isolated_network(key, removal_policy)

        model_data_url, model_data_source = self._model_data(model_bucket)
        self.model = sagemaker.CfnModel(
            self, "Model",
            execution_role_arn=self.role.role_arn,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=image, environment=self._container_env(), model_data_url=model_data_url,
                model_data_source=model_data_source,
            ),
            enable_network_isolation=cfg.vpc_only,
            vpc_config=vpc_config,
        )
        self.model.node.add_dependency(self.role)  # the role's policy must exist before SageMaker checks it

        self.endpoint_config = sagemaker.CfnEndpointConfig(
            self, "EndpointConfig",
            production_variants=[sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                variant_name=VARIANT,
                model_name=self.model.attr_model_name,
                instance_type=cfg.instance_type,
                # SageMaker creates endpoints with at least one instance; scaling then goes to min.
                initial_instance_count=max(1, cfg.min_instances),
                initial_variant_weight=1.0,
                # Without it, async GPU hosts run driver 470 / CUDA 11.4 (older than every GPU image
                # here); config checks the AMI against the image (stacks/config.py INFERENCE_AMIS).
                inference_ami_version=cfg.ami_version,
            )],
            # Instance types with local NVMe storage reject a volume key (their NVMe is
            # hardware-encrypted); everything else gets ours.
            kms_key_id=None if cfg.family.instance_storage else key.key_arn,
            async_inference_config=sagemaker.CfnEndpointConfig.AsyncInferenceConfigProperty(
                output_config=sagemaker.CfnEndpointConfig.AsyncInferenceOutputConfigProperty(
                    s3_output_path=output_bucket.s3_url_for_object(keys.ASYNC_OUTPUT_PREFIX),
                    s3_failure_path=output_bucket.s3_url_for_object(keys.ASYNC_FAILURE_PREFIX),
                    kms_key_id=key.key_arn,
                    notification_config=sagemaker.CfnEndpointConfig.AsyncInferenceNotificationConfigProperty(
                        success_topic=self.success_topic.topic_arn,
                        error_topic=self.error_topic.topic_arn,
                    ),
                ),
                client_config=sagemaker.CfnEndpointConfig.AsyncInferenceClientConfigProperty(
                    max_concurrent_invocations_per_instance=cfg.max_concurrent_invocations,
                ),
            ),
        )
        self.endpoint = sagemaker.CfnEndpoint(
            self, "Endpoint", endpoint_name=self.endpoint_name,
            endpoint_config_name=self.endpoint_config.attr_endpoint_config_name,
            # An update (new image, model or config) keeps the variant's current instance count
            # instead of resetting it to InitialInstanceCount under a backlog (AWS::SageMaker::Endpoint
            # RetainAllVariantProperties, CloudFormation User Guide). Changing instance_type while
            # the variant is a scalable target fails: see docs/infrastructure.md "Updates".
            retain_all_variant_properties=True,
        )
        self.endpoint.node.add_dependency(self.log_group)

        self.scaling = AsyncEndpointScaling(
            self, "Scaling",
            endpoint_name=self.endpoint_name,
            min_instances=cfg.min_instances,
            max_instances=cfg.max_instances,
            backlog_per_instance_target=cfg.backlog_per_instance_target,
            scale_out_cooldown=Duration.seconds(cfg.scale_out_cooldown_s),
            scale_in_cooldown=Duration.seconds(cfg.scale_in_cooldown_s),
            idle_minutes=cfg.scale_in_idle_minutes,
        )
        self.scaling.target.node.add_dependency(self.endpoint)

        self.oldest_request_alarm = cw.Alarm(
            self, "OldestRequestAlarm",
            alarm_description=f"A request has waited more than {cfg.oldest_request_alarm_s} s: capacity, quota "
                              "or a stuck instance",
            metric=sagemaker_metric(self.endpoint_name, "ApproximateAgeOfOldestRequest", "Maximum",
                                   Duration.minutes(5)),
            threshold=cfg.oldest_request_alarm_s, evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )
        self.failure_alarm = cw.Alarm(
            self, "InvocationFailureAlarm",
            alarm_description="The model container answered 5xx: invocations are failing",
            metric=sagemaker_metric(self.endpoint_name, "Invocation5XXErrors", "Sum", Duration.minutes(5)),
            threshold=cfg.failure_alarm_threshold, evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )
        for alarm in (self.oldest_request_alarm, self.failure_alarm):
            alarm.add_alarm_action(cw_actions.SnsAction(ops_topic))

        CfnOutput(self, "EndpointName", value=self.endpoint.attr_endpoint_name)
        CfnOutput(self, "SuccessTopicArn", value=self.success_topic.topic_arn)
        CfnOutput(self, "ErrorTopicArn", value=self.error_topic.topic_arn)
        if cfg.packaging == "dlc":  # (a byoc image's URI is the Image stack's ImageUri output)
            CfnOutput(self, "ModelImage", value=image)

    # --- pieces -------------------------------------------------------------------------
    def _container_env(self) -> dict[str, str]:
        cfg = self.cfg
        env = {
            env_names.BACKEND: cfg.backend,
            env_names.DEVICE: "cuda" if cfg.family.gpu else "cpu",
            env_names.COMPUTE_TYPE: cfg.compute_type,
            env_names.MODEL_NAME: cfg.model_id,
            env_names.MODEL_DIR: MODEL_DIR,
            env_names.MAX_CONCURRENCY: str(cfg.max_concurrent_invocations),
            env_names.REQUEST_TIMEOUT_S: str(cfg.container_request_timeout_s),
            env_names.INSTANCE_TYPE: cfg.instance_type,  # the cost block's price key (whisper_server.metering)
        }
        if cfg.packaging == "dlc":
            env.update({
                "SAGEMAKER_PROGRAM": "inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": f"{MODEL_DIR}/code",
                "TS_MAX_REQUEST_SIZE": TS_MAX_BYTES,
                "TS_MAX_RESPONSE_SIZE": TS_MAX_BYTES,
                "TS_DEFAULT_RESPONSE_TIMEOUT": str(cfg.container_request_timeout_s),
            })
        return env

    def _model_data(
        self, model_bucket: s3.IBucket,
    ) -> tuple[str | None, sagemaker.CfnModel.ModelDataSourceProperty | None]:
        """(ModelDataUrl, ModelDataSource): exactly one is set."""
        location = self.cfg.model_data_prefix_or_key
        uri = model_bucket.s3_url_for_object(location)
        if location.endswith(".tar.gz"):
            return uri, None
        # A prefix is copied to /opt/ml/model as is: no tarball to build for multi-GB weights.
        return None, sagemaker.CfnModel.ModelDataSourceProperty(
            s3_data_source=sagemaker.CfnModel.S3DataSourceProperty(
                s3_uri=uri, s3_data_type="S3Prefix", compression_type="None"))

    def _grant(self, *, key: kms.IKey, input_bucket: s3.IBucket, output_bucket: s3.IBucket,
               model_bucket: s3.IBucket, repository_arn: str) -> None:
        location = self.cfg.model_data_prefix_or_key
        add = self.role.add_to_policy
        model_objects = model_bucket.arn_for_objects(location if location.endswith(".tar.gz") else f"{location}*")
        add(iam.PolicyStatement(sid="ReadModelArtifact", actions=["s3:GetObject"], resources=[model_objects]))
        if not location.endswith(".tar.gz"):
            add(iam.PolicyStatement(sid="ListModelPrefix", actions=["s3:ListBucket"],
                                    resources=[model_bucket.bucket_arn],
                                    conditions={"StringLike": {"s3:prefix": [f"{location}*"]}}))
        add(iam.PolicyStatement(sid="ReadInputAudio", actions=["s3:GetObject"],
                                resources=[input_bucket.arn_for_objects("*")]))
        add(iam.PolicyStatement(
            sid="WriteAsyncResults", actions=["s3:PutObject", "s3:AbortMultipartUpload"],
            resources=[output_bucket.arn_for_objects(keys.ASYNC_OUTPUT_PREFIX + "*"),
                       output_bucket.arn_for_objects(keys.ASYNC_FAILURE_PREFIX + "*")]))
        add(iam.PolicyStatement(sid="UseDataKey", actions=["kms:Decrypt", "kms:GenerateDataKey"],
                                resources=[key.key_arn]))
        add(iam.PolicyStatement(sid="PublishResults", actions=["sns:Publish"],
                                resources=[self.success_topic.topic_arn, self.error_topic.topic_arn]))
        add(iam.PolicyStatement(
            sid="PullImage",
            actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            resources=[repository_arn]))
        add(iam.PolicyStatement(sid="EcrLogin", actions=["ecr:GetAuthorizationToken"], resources=["*"]))
        add(iam.PolicyStatement(
            sid="WriteEndpointLogs",
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[self.log_group.log_group_arn]))
        add(iam.PolicyStatement(
            sid="PublishInstanceMetrics", actions=["cloudwatch:PutMetricData"], resources=["*"],
            conditions={"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "AWS/SageMaker"]}}))
        acknowledge(self.role, "AwsSolutions-IAM5[Resource::*]",
                    "ecr:GetAuthorizationToken and cloudwatch:PutMetricData have no resource-level permissions "
                    "(PutMetricData is limited to SageMaker namespaces by condition)"
                    + ("; the EC2 network-interface actions of VPC mode take no resource ARNs" if self.cfg.vpc_only
                       else ""))
        if not location.endswith(".tar.gz"):
            acknowledge(self.role, s3_objects_finding(self.cfg.bucket_name("models"), f"{location}*"),
                        "SageMaker copies every object under the configured model prefix to /opt/ml/model")
        acknowledge(self.role, s3_objects_finding(self.cfg.bucket_name("input"), "*"),
                    "SageMaker reads whichever input object a request names; the input bucket holds only audio")
        for prefix in (keys.ASYNC_OUTPUT_PREFIX, keys.ASYNC_FAILURE_PREFIX):
            acknowledge(self.role, s3_objects_finding(self.cfg.bucket_name("output"), prefix + "*"),
                        f"SageMaker writes async results under {prefix} with generated names")

    def _isolated_network(self, key: kms.IKey, removal_policy: RemovalPolicy) \
            -> sagemaker.CfnModel.VpcConfigProperty:
        """Isolated subnets (no internet route) with the VPC endpoints SageMaker needs."""
        self.vpc = ec2.Vpc(
            self, "Vpc", max_azs=2, nat_gateways=0, ip_addresses=ec2.IpAddresses.cidr("10.80.0.0/16"),
            subnet_configuration=[ec2.SubnetConfiguration(name="isolated", cidr_mask=24,
                                                          subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)],
        )
        flow_logs = logs.LogGroup(self, "FlowLogs", retention=retention(self.cfg.log_retention_days),
                                  encryption_key=key, removal_policy=removal_policy)
        self.vpc.add_flow_log("FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs))
        self.security_group = ec2.SecurityGroup(
            self, "ModelSecurityGroup", vpc=self.vpc, allow_all_outbound=False,
            description="SageMaker model: HTTPS to the VPC endpoints only",
        )
        # The subnets have no internet route: HTTPS anywhere reaches only the interface endpoints
        # and the S3 gateway endpoint (whose address ranges are a per-region prefix list).
        self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443),
                                            "HTTPS to VPC endpoints and the S3 gateway endpoint")
        self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        for name, service in (
            ("EcrApi", ec2.InterfaceVpcEndpointAwsService.ECR),
            ("EcrDocker", ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER),
            ("Logs", ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS),
            ("Monitoring", ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING),
            ("Sns", ec2.InterfaceVpcEndpointAwsService.SNS),
            ("Kms", ec2.InterfaceVpcEndpointAwsService.KMS),
        ):
            # Not open to the whole VPC: only the model's security group may connect.
            endpoint = self.vpc.add_interface_endpoint(name, service=service, private_dns_enabled=True, open=False)
            endpoint.connections.allow_default_port_from(self.security_group, "SageMaker model")
        self.role.add_to_policy(iam.PolicyStatement(
            sid="ManageEndpointNetworkInterfaces",
            actions=["ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission",
                     "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission",
                     "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeDhcpOptions",
                     "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"],
            resources=["*"],  # EC2 network-interface actions for SageMaker VPC mode take no resource ARNs
        ))
        return sagemaker.CfnModel.VpcConfigProperty(
            security_group_ids=[self.security_group.security_group_id],
            subnets=self.vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED).subnet_ids,
        )

