"""What a request's record should cost, worked out by the tests on their own."""

from __future__ import annotations

from decimal import ROUND_UP, Decimal
from typing import Any


def cost_at(record: dict[str, Any], prices: tuple[Decimal, Decimal]) -> Decimal:
    """A record's usage at `prices` (input, output; US dollars per million tokens), rounded up to
    the micro-dollar as the balancer rounds it."""
    usage = record["usage"]
    total = usage["input_tokens"] * prices[0] + usage["output_tokens"] * prices[1]
    return (total / Decimal(1_000_000)).quantize(Decimal("0.000001"), rounding=ROUND_UP)
