"""The cost model (issue 16): docs/cost.md and the README's table are generated from the price
file and the benchmark results, never hand-filled, and the scaling defaults follow from it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from stacks.config import EnvConfig
from whisper_cli import cost_model
from whisper_contract import prices

REPO = Path(__file__).resolve().parents[2]


def test_docs_cost_md_and_the_readme_table_are_current() -> None:
    for path, text in cost_model.outputs().items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run `make cost-doc`"
    assert cost_model.main(["--check"]) == 0


def test_the_serial_model_reproduces_the_measured_runs() -> None:
    """The derivation's premise, checked against the H200 results: end to end runs near
    1/(1/F + 1/M) of the same run's front end and model, for one 1-hour file and for the 64."""
    inputs = cost_model.Inputs.load()
    f0, m0, e0 = inputs.anchor
    results = inputs.raw["measured_gpu"]["results"]

    def rtfx(mode: str, variant: str) -> float:
        return float(inputs.record(results, {"mode": mode, "variant": variant})["rtfx"])

    one_file = cost_model.serial(rtfx("front-end", "decode+VAD(cuda)+chunking, 1 file"),
                                 rtfx("model-only", "forced-100, 1 file of 1 h"))
    assert one_file == pytest.approx(rtfx("end-to-end", "1 file of 1 h"), rel=0.05)
    assert cost_model.serial(f0, m0) == pytest.approx(e0, rel=0.08)
    # The measured GPU itself, as a target, gets back exactly the measured full-backlog figure.
    raw = copy.deepcopy(inputs.raw)
    raw["instances"]["ml.g5.xlarge"] = {"gpu": "H200", "gpus": 1, "front_end_vcpus": 4}
    assert cost_model.Inputs(raw, inputs.table).estimate("ml.g5.xlarge").rtfx == pytest.approx(e0)


def test_every_figure_follows_the_price_file() -> None:
    inputs = cost_model.Inputs.load()
    data = json.loads(prices.PRICES_FILE.read_text())
    data["instances"]["ml.g5.xlarge"]["usd_per_hour"] = 2.816  # twice the price
    doubled = cost_model.Inputs(inputs.raw, prices.parse(data))
    before, after = inputs.estimate("ml.g5.xlarge"), doubled.estimate("ml.g5.xlarge")
    assert after.usd_per_audio_hour == pytest.approx(2 * before.usd_per_audio_hour)
    assert before.usd_per_audio_hour == pytest.approx(1.408 / before.rtfx)
    assert cost_model.comparison_table(doubled) != cost_model.comparison_table(inputs)
    # A type the model lists without a price is an error, not a silent $0.
    del data["instances"]["ml.g5.xlarge"]
    with pytest.raises(ValueError, match="ml.g5.xlarge has no price"):
        cost_model.Inputs(inputs.raw, prices.parse(data)).estimate("ml.g5.xlarge")


def test_scale_in_defaults_are_the_cost_models_break_even() -> None:
    inputs = cost_model.Inputs.load()
    assert EnvConfig.scale_in_idle_minutes == cost_model.break_even_idle_minutes(inputs)
    # Waited out in full (configured minutes + metric lag), the idle tail costs what a cold start does.
    tail = inputs.tail_instance_seconds(EnvConfig("x", "ml.g5.xlarge", "m", "faster-whisper"), 1)
    assert abs(tail - inputs.cold_start_s) < 60
    # Each further instance leaves one cooldown later: four instances idle 4 waits + 0+1+2+3 cooldowns.
    cfg = EnvConfig("x", "ml.g5.xlarge", "m", "faster-whisper", max_instances=4)
    assert inputs.tail_instance_seconds(cfg, 4) == pytest.approx(4 * tail + 6 * cfg.scale_in_cooldown_s)
    assert EnvConfig.scale_in_cooldown_s == 60 + inputs.lag_s  # one metric period plus its lag


def test_the_idle_vpc_endpoint_count_matches_the_prod_template() -> None:
    template = json.loads((REPO / "tests/infra/snapshots/prod/Whisper-prod-Endpoint.json").read_text())
    interface = [r for r in template["Resources"].values()
                 if r["Type"] == "AWS::EC2::VPCEndpoint" and r["Properties"].get("VpcEndpointType") == "Interface"]
    subnets = {json.dumps(s) for r in interface for s in r["Properties"]["SubnetIds"]}
    idle = cost_model.Inputs.load().raw["idle"]
    assert (len(interface), len(subnets)) == (idle["interface_endpoints"], idle["azs"])
