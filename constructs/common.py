"""Small helpers shared by the stacks and constructs."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Token, Validations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct, IConstruct

_RETENTION_NAMES = {
    1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS", 30: "ONE_MONTH",
    60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS", 150: "FIVE_MONTHS", 180: "SIX_MONTHS",
    365: "ONE_YEAR", 400: "THIRTEEN_MONTHS", 545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS", 1096: "THREE_YEARS",
    1827: "FIVE_YEARS", 2192: "SIX_YEARS", 2557: "SEVEN_YEARS", 2922: "EIGHT_YEARS", 3288: "NINE_YEARS",
    3653: "TEN_YEARS",
}


def bucket_ref(scope: Construct, cfg_bucket_name: str, construct_id: str) -> s3.IBucket:
    """A bucket of the Storage stack, referred to by its deterministic name (no export)."""
    return s3.Bucket.from_bucket_name(scope, construct_id, cfg_bucket_name)


def retention(days: int) -> logs.RetentionDays:
    """CloudWatch Logs retention for a day count that config validation already accepted."""
    return logs.RetentionDays[_RETENTION_NAMES[days]]


def acknowledge(scope: IConstruct, finding: str, reason: str) -> None:
    """Acknowledge one cdk-nag finding (``Rule`` or ``Rule[FindingId]``) on ``scope``, with why."""
    # Validation plugins report findings as "<plugin>::<finding>"; cdk-nag's plugin is AwsSolutions.
    full = finding if "::" in finding.split("[", 1)[0] else f"AwsSolutions::{finding}"
    Validations.of(scope).acknowledge(Acknowledgment(id=full, reason=reason))


def nag_region_account(stack: Stack) -> tuple[str, str]:
    """How cdk-nag prints the stack's region and account in finding ids: literally when the stack
    has them (the CDK CLI always supplies a region), else as pseudo-parameter names."""
    region = "<AWS::Region>" if Token.is_unresolved(stack.region) else stack.region
    account = "<AWS::AccountId>" if Token.is_unresolved(stack.account) else stack.account
    return region, account


def s3_objects_finding(bucket_name: str, pattern: str) -> str:
    """The cdk-nag IAM5 finding id for an object wildcard in one of our named buckets.

    ``bucket_name`` is an ``EnvConfig.bucket_name()`` value; cdk-nag prints its pseudo
    parameters as ``<AWS::AccountId>`` and ``<AWS::Region>``.
    """
    from aws_cdk import Aws

    printed = bucket_name
    for token, name in ((Aws.ACCOUNT_ID, "<AWS::AccountId>"), (Aws.REGION, "<AWS::Region>")):
        printed = printed.replace(token, name)
    assert not Token.is_unresolved(printed), printed
    return f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::{printed}/{pattern}]"
