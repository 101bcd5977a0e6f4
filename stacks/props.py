"""What every stack of the app takes from ``build_stacks``: typed, instead of ``**kwargs``."""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from constructs import Construct


@dataclass(frozen=True)
class StackProps:
    stack_name: str
    description: str
    termination_protection: bool
    env: cdk.Environment | None = None


def init_stack(stack: cdk.Stack, scope: Construct, construct_id: str, props: StackProps) -> None:
    """``cdk.Stack.__init__`` with the props spelled out (one place, so every stack gets all four)."""
    cdk.Stack.__init__(stack, scope, construct_id, env=props.env, stack_name=props.stack_name,
                       description=props.description, termination_protection=props.termination_protection)
