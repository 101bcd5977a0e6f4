"""Operations: one CloudWatch dashboard for the whole pipeline.

Async endpoints do not publish ``Invocations``/``InvocationsPerInstance``/``OverheadLatency``,
so throughput is read from the backlog and the Lambda invocations instead.
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cw
from constructs import Construct

from stacks.config import EnvConfig
from whisper_constructs.async_scaling import VARIANT, endpoint_metric
from whisper_constructs.queue_function import QueueFedFunction

WIDTH = 8
INSTANCE_NAMESPACE = "/aws/sagemaker/Endpoints"


class OperationsStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, cfg: EnvConfig, endpoint_name: str,
                 functions: dict[str, QueueFedFunction], **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        m = endpoint_metric
        # Instance metrics live in their own namespace, per variant; each running instance reports
        # CPUUtilization once a minute, so its SampleCount is the instance count.
        def instance_metric(name: str, statistic: str, label: str) -> cw.Metric:
            return cw.Metric(namespace=INSTANCE_NAMESPACE, metric_name=name, statistic=statistic,
                             dimensions_map={"EndpointName": endpoint_name, "VariantName": VARIANT},
                             period=Duration.minutes(1), label=label)

        instances = instance_metric("CPUUtilization", "SampleCount", "instances (SampleCount of CPUUtilization)")
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"whisper-{cfg.name}")
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Backlog", width=WIDTH, left=[
                m(endpoint_name, "ApproximateBacklogSize"),
                m(endpoint_name, "ApproximateBacklogSizePerInstance"),
                m(endpoint_name, "HasBacklogWithoutCapacity", "Maximum")]),
            cw.GraphWidget(title="Age of oldest request (s)", width=WIDTH,
                           left=[m(endpoint_name, "ApproximateAgeOfOldestRequest", "Maximum")],
                           left_annotations=[cw.HorizontalAnnotation(value=cfg.oldest_request_alarm_s,
                                                                     label="alarm")]),
            cw.GraphWidget(title="Instances and GPU", width=WIDTH, left=[instances],
                           left_annotations=[cw.HorizontalAnnotation(value=cfg.max_instances, label="max")],
                           right=[instance_metric("GPUUtilization", "Average", "GPU utilization %"),
                                  instance_metric("GPUMemoryUtilization", "Average", "GPU memory %")]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Invocation failures", width=WIDTH, left=[
                m(endpoint_name, "Invocation4XXErrors", "Sum", Duration.minutes(5)),
                m(endpoint_name, "Invocation5XXErrors", "Sum", Duration.minutes(5))]),
            cw.GraphWidget(title="Model latency (microseconds)", width=WIDTH, left=[
                m(endpoint_name, "ModelLatency", "p50"), m(endpoint_name, "ModelLatency", "p90"),
                m(endpoint_name, "ModelLatency", "Maximum")]),
            cw.GraphWidget(title="Lambda errors and throttles", width=WIDTH, left=[
                metric for name, fn in sorted(functions.items()) for metric in (
                    fn.function.metric_errors(label=f"{name} errors", period=Duration.minutes(5)),
                    fn.function.metric_throttles(label=f"{name} throttles", period=Duration.minutes(5)))]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Dead-letter queues (messages)", width=WIDTH, left=[
                fn.dlq.metric_approximate_number_of_messages_visible(label=f"{name} DLQ", statistic="Maximum")
                for name, fn in sorted(functions.items())]),
            cw.GraphWidget(title="Work queues (messages)", width=WIDTH, left=[
                fn.queue.metric_approximate_number_of_messages_visible(label=f"{name} queue", statistic="Maximum")
                for name, fn in sorted(functions.items())]),
            cw.GraphWidget(title="Files submitted and completed", width=WIDTH, left=[
                fn.function.metric_invocations(label=f"{name} invocations", period=Duration.minutes(5))
                for name, fn in sorted(functions.items())]),
        )
