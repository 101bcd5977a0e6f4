"""What an environment has spent: ``whisper-sm cost`` and the cost lines of ``whisper-sm status``.

Two sources, because they answer different questions:
* CloudWatch: instance-minutes. Every running instance publishes ``CPUUtilization`` once a
  minute (namespace ``/aws/sagemaker/Endpoints``, dimensions ``EndpointName`` + ``VariantName``),
  so its ``SampleCount`` summed over a period is the instance-minutes billed, idle ones included
  (the dashboard's spend widget counts the same way). Times the price: the instance spend.
* The job records (``_jobs/<id>.json``): each finished job's ``cost`` block, so the audio hours
  done and the part of the instance time that went into transcripts. The rest is cold starts
  and idle tails (docs/cost.md).
Prices come from ``whisper_contract.prices`` (the one seconds -> dollars rule).

CloudWatch sees an instance once it publishes metrics; SageMaker bills from launch, image pull
and model copy included, so ``instance_usd`` can be low by up to one cold start (docs/cost.md:
about 8 minutes) per scale-out from zero in the period.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from botocore.exceptions import ClientError

from whisper_cli.core import metric_dimensions
from whisper_contract import prices
from whisper_contract.jobs import JobRecord
from whisper_contract.keys import JOBS_PREFIX, KEY_INDEX_PREFIX

INSTANCE_NAMESPACE = "/aws/sagemaker/Endpoints"
INSTANCE_METRIC = "CPUUtilization"
MAX_DATAPOINTS = 1440  # GetMetricStatistics returns at most this many per call
# CloudWatch keeps 1-minute data 15 days, 5-minute 63 days, 1-hour 455 days.
PERIODS = ((timedelta(days=1), 60), (timedelta(days=5), 300), (timedelta(days=60), 3600))
_SINCE = re.compile(r"^(\d+)([mhd])$")


def parse_since(text: str, now: datetime) -> datetime:
    """``30m``, ``12h``, ``7d`` before ``now``, or an ISO date/time (UTC when it names no zone)."""
    match = _SINCE.match(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return now - {"m": timedelta(minutes=amount), "h": timedelta(hours=amount), "d": timedelta(days=amount)}[unit]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since must be like 30m, 12h, 7d or an ISO date/time; got {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def period_for(window: timedelta) -> int:
    for longest, period in PERIODS:
        if window <= longest:
            return period
    raise ValueError(f"a period of {window.days} days is longer than CloudWatch can answer in one call "
                     f"(at most {PERIODS[-1][0].days} days)")


def endpoint_shape(sagemaker: Any, endpoint_name: str) -> tuple[str | None, list[str]]:
    """(instance type, variant names) of the endpoint as deployed."""
    endpoint = sagemaker.describe_endpoint(EndpointName=endpoint_name)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variants = [v["VariantName"] for v in config.get("ProductionVariants", [])]
    types = {v.get("InstanceType") for v in config.get("ProductionVariants", [])}
    return (types.pop() if len(types) == 1 else None), variants


def instance_minutes(cloudwatch: Any, endpoint_name: str, variants: list[str], start: datetime,
                     end: datetime) -> float:
    period = period_for(end - start)
    total = 0.0
    for variant in variants:
        stats = cloudwatch.get_metric_statistics(
            Namespace=INSTANCE_NAMESPACE, MetricName=INSTANCE_METRIC,
            Dimensions=metric_dimensions(INSTANCE_METRIC, endpoint_name, variant),
            StartTime=start, EndTime=end, Period=period, Statistics=["SampleCount"])
        total += sum(p["SampleCount"] for p in stats.get("Datapoints", []))
    return total


@dataclass
class JobTotals:
    jobs: int = 0  # finished in the period
    costed: int = 0  # of those, with a cost block
    audio_seconds: float = 0.0
    instance_seconds: float = 0.0
    usd: float = 0.0  # sum of the blocks' estimates
    queue_seconds_max: float = 0.0

    def add(self, job: JobRecord) -> None:
        self.jobs += 1
        cost = job.cost
        if cost is None:
            return
        self.costed += 1
        self.audio_seconds += cost.audio_seconds
        self.instance_seconds += cost.instance_seconds
        self.usd += cost.estimated_usd or 0.0
        self.queue_seconds_max = max(self.queue_seconds_max, cost.queue_seconds or 0.0)


def job_totals(s3: Any, bucket: str, start: datetime, end: datetime) -> JobTotals:
    """Sum the cost blocks of the jobs that finished in [start, end). A record is last written
    when its job finishes, so objects modified before ``start`` are not even read."""
    totals = JobTotals()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=JOBS_PREFIX):
        for obj in page.get("Contents", []):
            if obj["Key"].startswith(KEY_INDEX_PREFIX) or obj["LastModified"] < start:
                continue
            job = JobRecord.from_json(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            if job.finished and job.completed_at and start <= datetime.fromisoformat(job.completed_at) < end:
                totals.add(job)
    return totals


@dataclass(frozen=True)
class Spend:
    start: str
    end: str
    instance_type: str | None
    price_per_hour: float | None
    price_date: str
    instance_hours: float
    instance_usd: float | None  # instance-hours x price: what the endpoint's instances cost
    jobs: int
    jobs_with_cost: int
    audio_hours: float
    jobs_usd: float  # the part of the instance spend the transcripts' cost blocks account for
    usd_per_audio_hour: float | None  # instance spend / audio hours: idle and cold starts included
    unattributed_share: float | None  # instance time not in any job: cold starts and idle tails
    queue_seconds_max: float


def spend(session: Any, endpoint_name: str, output_bucket: str, start: datetime, end: datetime,
          table: prices.PriceTable | None = None) -> Spend:
    table = table or prices.load()
    instance_type, variants = endpoint_shape(session.client("sagemaker"), endpoint_name)
    minutes = instance_minutes(session.client("cloudwatch"), endpoint_name, variants, start, end)
    jobs = job_totals(session.client("s3"), output_bucket, start, end)
    price = table.instance(instance_type)
    instance_usd = None if price is None else table.usd(minutes * 60, price.usd_per_hour)
    audio_hours = jobs.audio_seconds / 3600
    return Spend(
        start=start.isoformat(timespec="seconds"), end=end.isoformat(timespec="seconds"),
        instance_type=instance_type, price_per_hour=None if price is None else price.usd_per_hour,
        price_date=table.as_of, instance_hours=round(minutes / 60, 3), instance_usd=instance_usd,
        jobs=jobs.jobs, jobs_with_cost=jobs.costed, audio_hours=round(audio_hours, 4), jobs_usd=round(jobs.usd, 6),
        usd_per_audio_hour=None if instance_usd is None or not audio_hours else round(instance_usd / audio_hours, 4),
        unattributed_share=None if not minutes else round(max(0.0, 1 - jobs.instance_seconds / (minutes * 60)), 3),
        queue_seconds_max=jobs.queue_seconds_max,
    )


def status_spend(session: Any, endpoint_name: str, now: datetime | None = None,
                 table: prices.PriceTable | None = None) -> dict[str, Any]:
    """The cost lines of ``whisper-sm status``: instance type, price, instance spend since 00:00 UTC.

    A caller allowed to see the backlog but not the endpoint config (IAM) still gets its status:
    the cost lines then say why they are missing."""
    table = table or prices.load()
    now = now or datetime.now(timezone.utc)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        instance_type, variants = endpoint_shape(session.client("sagemaker"), endpoint_name)
        minutes = instance_minutes(session.client("cloudwatch"), endpoint_name, variants, midnight, now)
    except ClientError as exc:
        return {"cost": f"unavailable: {exc}"}
    price = table.instance(instance_type)
    return {"instance_type": instance_type, "price_per_hour": None if price is None else price.usd_per_hour,
            "instance_hours_today": round(minutes / 60, 3),
            "spend_today_usd": None if price is None else table.usd(minutes * 60, price.usd_per_hour)}
