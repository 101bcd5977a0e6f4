"""Operations: one CloudWatch dashboard for the whole pipeline.

Async endpoints do not publish ``Invocations``/``InvocationsPerInstance``/``OverheadLatency``,
so throughput is read from the backlog and the Lambda invocations instead.
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cw
from constructs import Construct

from stacks.config import EnvConfig
from whisper_contract import prices
from stacks.props import StackProps, init_stack
from whisper_constructs.queue_function import QueueFedFunction
from whisper_constructs.sagemaker_metrics import sagemaker_metric

WIDTH = 8


class OperationsStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, cfg: EnvConfig, endpoint_name: str,
                 functions: dict[str, QueueFedFunction], props: StackProps) -> None:
        init_stack(self, scope, construct_id, props)

        def m(name: str, statistic: str = "Average", period: Duration = Duration.minutes(1),
              label: str | None = None) -> cw.Metric:
            return sagemaker_metric(endpoint_name, name, statistic, period, label=label)

        # Each running instance reports CPUUtilization once a minute: its SampleCount is the instance count.
        instances = m("CPUUtilization", "SampleCount", label="instances (SampleCount of CPUUtilization)")
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"whisper-{cfg.name}")
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Backlog", width=WIDTH, left=[
                m("ApproximateBacklogSize"),
                m("ApproximateBacklogSizePerInstance"),
                m("HasBacklogWithoutCapacity", "Maximum")]),
            cw.GraphWidget(title="Age of oldest request (s)", width=WIDTH,
                           left=[m("ApproximateAgeOfOldestRequest", "Maximum")],
                           left_annotations=[cw.HorizontalAnnotation(value=cfg.oldest_request_alarm_s,
                                                                     label="alarm")]),
            cw.GraphWidget(title="Instances and GPU", width=WIDTH, left=[instances],
                           left_annotations=[cw.HorizontalAnnotation(value=cfg.max_instances, label="max")],
                           right=[m("GPUUtilization", label="GPU utilization %"),
                                  m("GPUMemoryUtilization", label="GPU memory %")]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Invocation failures", width=WIDTH, left=[
                m("Invocation4XXErrors", "Sum", Duration.minutes(5)),
                m("Invocation5XXErrors", "Sum", Duration.minutes(5))]),
            cw.GraphWidget(title="Model latency (microseconds)", width=WIDTH, left=[
                m("ModelLatency", "p50"), m("ModelLatency", "p90"),
                m("ModelLatency", "Maximum")]),
            cw.GraphWidget(title="Lambda errors and throttles", width=WIDTH, left=[
                metric for name, fn in sorted(functions.items()) for metric in (
                    fn.function.metric_errors(label=f"{name} errors", period=Duration.minutes(5)),
                    fn.function.metric_throttles(label=f"{name} throttles", period=Duration.minutes(5)))]),
        )
        self.dashboard.add_widgets(spend_widget(cfg, instances))
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


def spend_widget(cfg: EnvConfig, instances: cw.Metric) -> cw.IWidget:
    """Estimated instance spend: running instances x the hourly price (prices.json, at synth).

    ``instances`` is a per-minute count, so each minute costs instances x price / 60; the running
    sum is the spend over the dashboard's time range. Storage, Lambda and the VPC endpoints are
    not in it (docs/cost.md lists them).
    """
    table = prices.load()
    price = table.instance(cfg.instance_type)
    if price is None:
        return cw.TextWidget(width=WIDTH * 3, height=2, markdown=(
            f"**Estimated spend**: no price for `{cfg.instance_type}` in whisper_contract/prices.json; add it "
            "and redeploy."))
    per_hour = price.usd_per_hour
    source = f"{cfg.instance_type} at ${per_hour:g}/h, prices.json of {table.as_of}, {table.region}"
    return cw.GraphWidget(
        title=f"Estimated spend (USD; {source})", width=WIDTH * 3,
        left=[cw.MathExpression(expression=f"instances * {per_hour}", using_metrics={"instances": instances},
                                label="USD per hour now", period=Duration.minutes(1))],
        right=[cw.MathExpression(expression=f"RUNNING_SUM(instances * {per_hour} / 60)",
                                 using_metrics={"instances": instances}, label="USD so far (this time range)",
                                 period=Duration.minutes(1))],
    )
