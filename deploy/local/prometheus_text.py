"""Figures from a Prometheus ``/metrics`` page, parsed with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def scrape(url: str) -> str:
    """The Prometheus text at ``url``. Raises ``OSError`` when it does not answer."""
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 -- loopback URL we built
        text: str = response.read().decode()
        return text


def _samples(text: str, name: str) -> Iterator[Sample]:
    for family in text_string_to_metric_families(text):
        yield from (sample for sample in family.samples if sample.name == name)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` (e.g. ``x_total``) carrying every label of ``labels``."""
    return sum(
        sample.value
        for sample in _samples(text, name)
        if all(sample.labels.get(key) == value for key, value in labels.items())
    )


def histogram_quantile(text: str, name: str, quantile: float) -> float | None:
    """Quantile (0..1) of histogram ``name``, interpolated inside its bucket as PromQL does.

    Buckets of the same bound are added up (several workers' pages may be
    concatenated); None when the histogram has no observation.
    """
    buckets: dict[float, float] = {}
    for sample in _samples(text, f"{name}_bucket"):
        bound = float(sample.labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + sample.value
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return None
    rank = quantile * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower
