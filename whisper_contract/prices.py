"""Hourly prices: one data file (``prices.json`` beside this module), read here and nowhere else.

Every cost figure of the project (the transcript's ``cost`` block, the dashboard's spend
widget, ``whisper-sm cost``, docs/cost.md) comes from ``PriceTable.usd`` so that one rule
turns seconds into dollars. Standard library only: the container and the Lambdas carry it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from whisper_contract.result import Cost

PRICES_FILE = Path(__file__).with_name("prices.json")
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class Price:
    """One priced thing: an instance type (billed per instance-hour) or a service (per audio hour)."""

    name: str
    usd_per_hour: float
    label: str = ""  # hardware of an instance, or the service's name
    basis: str = ""  # how the hourly figure was derived (services: per-minute list price)
    note: str = ""


@dataclass(frozen=True)
class PriceTable:
    region: str
    currency: str
    as_of: str  # ISO date the figures were recorded
    source: str
    verified: str
    instances: dict[str, Price]
    services: dict[str, Price]
    fixed: dict[str, float]  # costs that run while nothing runs: key, dashboard, storage, VPC endpoints

    def instance(self, instance_type: str | None) -> Price | None:
        """The price of ``instance_type``; None when unknown (no estimate beats a wrong one)."""
        return self.instances.get(instance_type or "")

    @staticmethod
    def usd(seconds: float, usd_per_hour: float) -> float:
        """Dollars for ``seconds`` at ``usd_per_hour``: the one seconds -> dollars rule."""
        return round(seconds * usd_per_hour / SECONDS_PER_HOUR, 6)

    def estimate(self, instance_type: str | None, seconds: float) -> float | None:
        price = self.instance(instance_type)
        return None if price is None else self.usd(seconds, price.usd_per_hour)


def _price(name: str, raw: dict[str, Any]) -> Price:
    value = raw.get("usd_per_hour")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"prices: {name}.usd_per_hour must be a positive number, got {value!r}")
    return Price(name=name, usd_per_hour=float(value), label=str(raw.get("label") or raw.get("hardware") or ""),
                 basis=str(raw.get("basis", "")), note=str(raw.get("note", "")))


def parse(data: dict[str, Any]) -> PriceTable:
    for key in ("region", "currency", "as_of", "instances"):
        if key not in data:
            raise ValueError(f"prices: {key!r} is missing")
    return PriceTable(
        region=str(data["region"]), currency=str(data["currency"]), as_of=str(data["as_of"]),
        source=str(data.get("source", "")), verified=str(data.get("verified", "")),
        instances={name: _price(name, raw) for name, raw in data["instances"].items()},
        services={name: _price(name, raw) for name, raw in (data.get("services") or {}).items()},
        fixed={name: float(value) for name, value in (data.get("fixed") or {}).items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)},
    )


def load(path: Path | None = None) -> PriceTable:
    """The table in ``path`` (default: the shipped ``prices.json``, read once per process)."""
    return _load(str(path or PRICES_FILE))


@lru_cache(maxsize=4)
def _load(path: str) -> PriceTable:
    return parse(json.loads(Path(path).read_text(encoding="utf-8")))


def queue_seconds(submitted_at: str | None, started_at: str | None) -> float | None:
    """Seconds from submission to the start of decoding; None when either end is unknown."""
    if not submitted_at or not started_at:
        return None
    try:
        start, submit = datetime.fromisoformat(started_at), datetime.fromisoformat(submitted_at)
    except ValueError:
        return None
    # Clocks of the Lambda and the instance differ by milliseconds: never a negative wait.
    return round(max(0.0, (start - submit).total_seconds()), 3)


def priced(cost: Cost, submitted_at: str | None, table: PriceTable | None = None) -> Cost:
    """``cost`` with the queue wait and the estimate filled in (the completion Lambda's step)."""
    table = table or load()
    price = table.instance(cost.instance_type)
    return replace(
        cost, queue_seconds=queue_seconds(submitted_at, cost.started_at),
        price_per_hour=None if price is None else price.usd_per_hour,
        price_date=None if price is None else table.as_of,
        estimated_usd=table.estimate(cost.instance_type, cost.instance_seconds),
    )
