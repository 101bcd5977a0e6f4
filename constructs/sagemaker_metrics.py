"""Which SageMaker metric is published in which namespace with which dimensions: one table.

An alarm or widget whose dimensions differ from the published ones matches no data and never
fires (a 5XX alarm on ``EndpointName`` alone stays OK forever). Sources (SageMaker developer
guide): "Amazon SageMaker AI metrics in Amazon CloudWatch"
(https://docs.aws.amazon.com/sagemaker/latest/dg/monitoring-cloudwatch.html): invocation metrics
(namespace ``AWS/SageMaker``) and instance metrics (``/aws/sagemaker/Endpoints``) carry
``EndpointName`` and ``VariantName``; "Monitoring asynchronous endpoints"
(https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference-monitor.html): the backlog metrics
carry ``EndpointName`` only, and ``Invocations``, ``InvocationsPerInstance`` and ``OverheadLatency``
are not published for async endpoints (so they are not in this table).
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw

ENDPOINT_NAMESPACE = "AWS/SageMaker"
INSTANCE_NAMESPACE = "/aws/sagemaker/Endpoints"
VARIANT = "AllTraffic"
PERIOD = Duration.minutes(1)
ENDPOINT = ("EndpointName",)
ENDPOINT_VARIANT = ("EndpointName", "VariantName")


@dataclass(frozen=True)
class MetricSpec:
    namespace: str
    dimensions: tuple[str, ...]


SAGEMAKER_METRICS: dict[str, MetricSpec] = {
    # async backlog: per endpoint
    "ApproximateBacklogSize": MetricSpec(ENDPOINT_NAMESPACE, ENDPOINT),
    "ApproximateBacklogSizePerInstance": MetricSpec(ENDPOINT_NAMESPACE, ENDPOINT),
    "ApproximateAgeOfOldestRequest": MetricSpec(ENDPOINT_NAMESPACE, ENDPOINT),
    "HasBacklogWithoutCapacity": MetricSpec(ENDPOINT_NAMESPACE, ENDPOINT),
    # invocation metrics: per endpoint and variant ("the same as for real-time endpoints")
    "Invocation4XXErrors": MetricSpec(ENDPOINT_NAMESPACE, ENDPOINT_VARIANT),
    "Invocation5XXErrors": MetricSpec(ENDPOINT_NAMESPACE, ENDPOINT_VARIANT),
    "ModelLatency": MetricSpec(ENDPOINT_NAMESPACE, ENDPOINT_VARIANT),
    # instance metrics
    "CPUUtilization": MetricSpec(INSTANCE_NAMESPACE, ENDPOINT_VARIANT),
    "MemoryUtilization": MetricSpec(INSTANCE_NAMESPACE, ENDPOINT_VARIANT),
    "GPUUtilization": MetricSpec(INSTANCE_NAMESPACE, ENDPOINT_VARIANT),
    "GPUMemoryUtilization": MetricSpec(INSTANCE_NAMESPACE, ENDPOINT_VARIANT),
    "DiskUtilization": MetricSpec(INSTANCE_NAMESPACE, ENDPOINT_VARIANT),
}


def sagemaker_metric(endpoint_name: str, metric_name: str, statistic: str = "Average",
                     period: Duration = PERIOD, *, label: str | None = None) -> cw.Metric:
    """The metric with exactly the namespace and dimensions SageMaker publishes it with."""
    spec = SAGEMAKER_METRICS[metric_name]
    values = {"EndpointName": endpoint_name, "VariantName": VARIANT}
    return cw.Metric(namespace=spec.namespace, metric_name=metric_name, statistic=statistic, period=period,
                     dimensions_map={d: values[d] for d in spec.dimensions}, label=label)
