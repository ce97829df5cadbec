"""What every benchmark prints: progress on stderr, percentiles, one JSON line last on stdout."""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Sequence
from typing import Any


def say(message: str) -> None:
    """Progress for people, on stderr (stdout's last line is the JSON result)."""
    print(message, file=sys.stderr, flush=True)


def percentile(samples: Sequence[float], p: int) -> float:
    """The ``p``-th percentile (``p`` in 1..99) of ``samples``; NaN when there are none.

    Linear interpolation between the closest ranks, with the smallest sample
    at the 0th and the largest at the 100th percentile (``statistics.quantiles``'s
    ``inclusive`` method, numpy's default).
    """
    if not 1 <= p <= 99:
        raise ValueError(f"percentile {p} is not within 1..99")
    if len(samples) < 2:
        return samples[0] if samples else math.nan
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def json_line(result: dict[str, Any]) -> str:
    """The final JSON line of a benchmark."""
    return json.dumps(result, sort_keys=False)
