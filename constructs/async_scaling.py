"""Scale-from-zero for a SageMaker asynchronous endpoint, with step policies only.

Target tracking cannot leave zero instances: at zero there is no per-instance metric to track.
So, as AWS's async samples do:

* ``HasBacklogWithoutCapacity >= 1`` (requests waiting, no instance) -> +1 instance;
* ``ApproximateBacklogSizePerInstance >= target`` -> +1, and +2 at twice the target;
* ``ApproximateBacklogSizePerInstance < 1`` for ``idle_minutes`` -> -1 (down to min, maybe 0).

Every alarm uses the single dimension ``EndpointName``: async backlog metrics are published per
endpoint (whisper_constructs.sagemaker_metrics holds the table), and an alarm with an extra
``VariantName`` dimension would never see data.
"""

from __future__ import annotations

from aws_cdk import Aws, Duration
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from constructs import Construct

from whisper_constructs.sagemaker_metrics import VARIANT, sagemaker_metric

class AsyncEndpointScaling(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        endpoint_name: str,
        min_instances: int,
        max_instances: int,
        backlog_per_instance_target: float,
        scale_out_cooldown: Duration,
        scale_in_cooldown: Duration,
        idle_minutes: int,
    ) -> None:
        super().__init__(scope, construct_id)
        # Application Auto Scaling's own service-linked role for SageMaker (created on first use):
        # no custom role with broad sagemaker/cloudwatch permissions.
        service_linked = iam.Role.from_role_arn(
            self, "ServiceLinkedRole",
            f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:role/aws-service-role/"
            "sagemaker.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
        )
        self.target = appscaling.ScalableTarget(
            self, "Target",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            scalable_dimension="sagemaker:variant:DesiredInstanceCount",
            resource_id=f"endpoint/{endpoint_name}/variant/{VARIANT}",
            min_capacity=min_instances,
            max_capacity=max_instances,
            role=service_linked,
        )

        # 0 -> 1: the only signal that exists while no instance is running.
        self.scale_out_from_zero_alarm, self.scale_out_from_zero = self._step(
            "ScaleOutFromZero",
            metric=sagemaker_metric(endpoint_name, "HasBacklogWithoutCapacity"),
            threshold=1, periods=1, greater=True, cooldown=scale_out_cooldown,
            steps=[(0, None, 1)],
            description="Requests are waiting and the endpoint has no instance: start one",
        )
        # 1 -> N: queued requests per running instance above the target.
        self.scale_out_alarm, self.scale_out = self._step(
            "ScaleOutOnBacklog",
            metric=sagemaker_metric(endpoint_name, "ApproximateBacklogSizePerInstance"),
            threshold=backlog_per_instance_target, periods=2, greater=True, cooldown=scale_out_cooldown,
            steps=[(0, backlog_per_instance_target, 1), (backlog_per_instance_target, None, 2)],
            description=f"More than {backlog_per_instance_target:g} queued requests per instance: add capacity",
        )
        # N -> 0: nothing queued or running for idle_minutes.
        self.scale_in_alarm, self.scale_in = self._step(
            "ScaleInWhenIdle",
            metric=sagemaker_metric(endpoint_name, "ApproximateBacklogSizePerInstance"),
            threshold=1, periods=idle_minutes, greater=False, cooldown=scale_in_cooldown,
            steps=[(None, 0, -1)],
            description=f"Backlog empty for {idle_minutes} minutes: remove an instance",
        )

    def _step(
        self, name: str, *, metric: cw.Metric, threshold: float, periods: int, greater: bool,
        cooldown: Duration, steps: list[tuple[float | None, float | None, int]], description: str,
    ) -> tuple[cw.Alarm, appscaling.StepScalingAction]:
        action = appscaling.StepScalingAction(
            self, f"{name}Policy",
            scaling_target=self.target,
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            metric_aggregation_type=appscaling.MetricAggregationType.AVERAGE,
            cooldown=cooldown,
        )
        # Step bounds are offsets from the alarm threshold.
        for lower, upper, change in steps:
            action.add_adjustment(adjustment=change, lower_bound=lower, upper_bound=upper)
        alarm = cw.Alarm(
            self, f"{name}Alarm",
            alarm_description=description,
            metric=metric,
            threshold=threshold,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            comparison_operator=(cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD if greater
                                 else cw.ComparisonOperator.LESS_THAN_THRESHOLD),
            # Scale out: no data means no traffic. Scale in: no data (e.g. at zero instances)
            # is no evidence of idleness, so the alarm goes to INSUFFICIENT_DATA and does nothing.
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING if greater else cw.TreatMissingData.MISSING,
        )
        alarm.add_alarm_action(cw_actions.ApplicationScalingAction(action))
        return alarm, action
