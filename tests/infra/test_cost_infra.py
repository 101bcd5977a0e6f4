"""Issue 16 in the templates: the dashboard's estimated-spend widget (metric math on the instance
count and prices.json) and the cost-tuned scale-in defaults."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stacks.config import EnvConfig
from whisper_contract import prices

Synth = Any  # conftest.py's fixture type (not importable under importlib mode)


def _widgets(synth: Synth) -> list[dict[str, Any]]:
    template = synth.template_json(synth.stacks.operations)
    props = next(r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Dashboard")["Properties"]
    # The body is an Fn::Join of JSON text and tokens (function/queue names): tokens -> "X".
    body = json.loads("".join(p if isinstance(p, str) else "X" for p in props["DashboardBody"]["Fn::Join"][1]))
    return body["widgets"]  # type: ignore[no-any-return]


def _spend(synth: Synth) -> dict[str, Any]:
    found = [w for w in _widgets(synth) if "Estimated spend" in json.dumps(w)]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_the_spend_widget_is_instances_times_the_price(env: str, request: pytest.FixtureRequest) -> None:
    synth = request.getfixturevalue(env)
    price = prices.load().instance(synth.cfg.instance_type)
    assert price is not None
    metrics = _spend(synth)["properties"]["metrics"]
    expressions = {m[0]["expression"]: m[0] for m in metrics if "expression" in m[0]}
    assert set(expressions) == {f"instances * {price.usd_per_hour:g}",
                                f"RUNNING_SUM(instances * {price.usd_per_hour:g} / 60)"}
    assert {e.get("yAxis", "left") for e in expressions.values()} == {"left", "right"}
    # "instances" is the per-minute SampleCount of CPUUtilization with the dimensions SageMaker
    # publishes it with: one datapoint per running instance per minute.
    (counted,) = [m for m in metrics if "CPUUtilization" in m]
    assert counted[:6] == ["/aws/sagemaker/Endpoints", "CPUUtilization", "EndpointName", f"whisper-{env}",
                           "VariantName", "AllTraffic"]
    options = counted[6]
    assert (options["id"], options["stat"], options["period"], options["visible"]) == ("instances", "SampleCount",
                                                                                       60, False)


@pytest.fixture(scope="module")
def unpriced_defaults(synth_variant: Any) -> Synth:
    """dev on a type prices.json does not list, with the scaling keys left to their defaults."""
    return synth_variant("dev", {"instance_type": "ml.g4dn.xlarge", "engine_build": None,
                                 "scale_in_idle_minutes": None, "scale_in_cooldown_s": None})


def test_an_unpriced_instance_type_gets_a_note_instead_of_a_made_up_figure(unpriced_defaults: Synth) -> None:
    assert prices.load().instance("ml.g4dn.xlarge") is None
    note = _spend(unpriced_defaults)
    assert note["type"] == "text" and "no price for `ml.g4dn.xlarge`" in note["properties"]["markdown"]


def test_the_scale_in_policy_gets_the_cost_tuned_defaults(unpriced_defaults: Synth) -> None:
    template = unpriced_defaults.template_json(unpriced_defaults.stacks.endpoint)
    resources = template["Resources"]
    (alarm,) = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"
                and r["Properties"].get("ComparisonOperator") == "LessThanThreshold"]
    assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == EnvConfig.scale_in_idle_minutes == 7
    (policy,) = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy"
                 and r["Properties"]["StepScalingPolicyConfiguration"]["StepAdjustments"][0]["ScalingAdjustment"] < 0]
    assert policy["StepScalingPolicyConfiguration"]["Cooldown"] == EnvConfig.scale_in_cooldown_s == 120
