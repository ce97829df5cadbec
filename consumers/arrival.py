"""How far device time lags arrival, per reading stream: a histogram and a backfill count.

A reading's *lag* is its arrival minus its device timestamp. Arrival is the
record's ``arrived-at`` header (:data:`schemas.ARRIVED_AT_HEADER`: the gateway's
clock when it accepted the request), or, for a record without one (a producer
writing straight to Kafka) or whose value is not ASCII digits, the record's
Kafka timestamp (``LogAppendTime`` on the project's topics: when the broker
appended it). A negative lag is a device whose clock runs ahead: the histogram's
bounds go below zero for it. A *backfilled* reading lags by more than
``CONSUMER_BACKFILL_AFTER`` (an hour): a device uploading what it buffered.

Lags are computed in integer microseconds, so a bound or the backfill threshold
is met exactly. The readings of every committed batch are counted, duplicates
(device retries, replays) included, like ``energy_consumer_events_consumed_total``.

Cost: a ``Histogram.observe`` per reading (0.65 us) would be several percent of
a worker's CPU (8 to 10 us per reading). Instead each batch is first counted per
distinct (headers, Kafka timestamp, device timestamp) at C speed (``Counter``
over ``zip`` and ``operator`` getters): heartbeats of one minute share their
device timestamp and the records of one request their header, so a batch of
20,000 readings has a few hundred such keys. Only those go through Python, and
the sums are added to this collector under one lock per batch. The keys are
counted as the batch is decoded (:class:`consumers.batch.Batch`), while its
records are still in the CPU's caches rather than after its write has gone
through other memory; they are added to the histogram once it is committed.
"""

from __future__ import annotations

import itertools
import operator
import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas import ARRIVED_AT_HEADER

#: Upper bounds of the lag buckets, seconds. Below zero: device clocks ahead (the
#: gateway refuses readings more than 5 minutes ahead); above: delivery delays up
#: to the backfill of a device that was offline for days.
LAG_BOUNDS_S: tuple[float, ...] = (
    -300, -120, -60, -30, -10, -1, 0, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800,
    3600, 7200, 21600, 86400, 604800,
)  # fmt: skip

LAG = "energy_consumer_arrival_lag_seconds"
BACKFILLED = "energy_consumer_backfilled_readings"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: (headers, Kafka timestamp) of a record, and the device timestamp of a history row.
_arrival_of_record = operator.attrgetter("headers", "timestamp")
_device_time = operator.itemgetter(1)
_value = operator.itemgetter(0)
_source = operator.itemgetter(1)


def arrival_keys(entries: Sequence[tuple[Any, Any]]) -> Counter[tuple[tuple[Any, int], datetime]]:
    """How many of ``entries`` (history rows with the ``ConsumerRecord`` each came from)
    share each ((headers, Kafka timestamp), device timestamp), counted at C speed.

    Best called while the records are fresh in the CPU's caches (as the batch is decoded).
    """
    return Counter(
        zip(
            map(_arrival_of_record, map(_source, entries)),
            map(_device_time, map(_value, entries)),
            strict=True,
        )
    )


def arrival_ms(headers: Iterable[tuple[str, bytes | None]], timestamp_ms: int) -> int:
    """When a record arrived: its ``arrived-at`` header, else ``timestamp_ms`` (Kafka's)."""
    for name, value in headers:
        if name == ARRIVED_AT_HEADER:
            if value is not None and value.isdigit():
                return int(value)
            break
    return timestamp_ms


class ArrivalLag(Collector):
    """Lag histogram (``energy_consumer_arrival_lag_seconds``) and backfilled readings
    (``energy_consumer_backfilled_readings_total``), per stream.

    The histogram has negative bounds, so, as OpenMetrics asks, it has neither
    ``_sum`` (it could go down) nor ``_count``: its ``+Inf`` bucket is the count.
    Safe to observe from the worker's event loop while the metrics server's
    thread collects.
    """

    def __init__(self, bounds_s: Sequence[float] = LAG_BOUNDS_S) -> None:
        self._bounds_s = tuple(bounds_s)
        self._bounds_us = [round(bound * 1_000_000) for bound in self._bounds_s]
        self._lock = threading.Lock()
        #: Per stream: readings per bucket (not cumulative; the last is above every bound).
        self._counts: dict[str, list[int]] = {}
        self._backfilled: dict[str, int] = {}

    def track(self, stream: str) -> None:
        """Export ``stream`` from now on, at zero until it has readings."""
        with self._lock:
            self._counts.setdefault(stream, [0] * (len(self._bounds_us) + 1))
            self._backfilled.setdefault(stream, 0)

    def observe(
        self,
        stream: str,
        keys: Mapping[tuple[tuple[Any, int], datetime], int],
        backfill_after: timedelta,
    ) -> None:
        """Count the readings of :func:`arrival_keys` (their number per key)."""
        if not keys:
            return
        counts = [0] * (len(self._bounds_us) + 1)
        backfilled = 0
        threshold_us = backfill_after // _MICROSECOND
        bounds_us = self._bounds_us
        device_us: dict[datetime, int] = {}
        for ((headers, timestamp_ms), device), n in keys.items():
            arrived_ms = arrival_ms(headers, timestamp_ms) if headers else timestamp_ms
            at_us = device_us.get(device)
            if at_us is None:
                at_us = device_us[device] = (device - _EPOCH) // _MICROSECOND
            lag_us = arrived_ms * 1000 - at_us
            # bisect_left: a lag equal to a bound belongs to that bound's bucket (le).
            counts[bisect_left(bounds_us, lag_us)] += n
            if lag_us > threshold_us:
                backfilled += n
        with self._lock:
            totals = self._counts.setdefault(stream, [0] * len(counts))
            for index, count in enumerate(counts):
                totals[index] += count
            self._backfilled[stream] = self._backfilled.get(stream, 0) + backfilled

    def describe(self) -> Iterator[Metric]:
        """The two families, without samples (the registry's name check)."""
        yield HistogramMetricFamily(LAG, _LAG_HELP, labels=["stream"])
        yield CounterMetricFamily(BACKFILLED, _BACKFILLED_HELP, labels=["stream"])

    def collect(self) -> Iterator[Metric]:
        """Both families, every tracked or observed stream."""
        with self._lock:
            counts = {stream: list(values) for stream, values in self._counts.items()}
            backfilled = dict(self._backfilled)
        lag = HistogramMetricFamily(LAG, _LAG_HELP, labels=["stream"])
        late = CounterMetricFamily(BACKFILLED, _BACKFILLED_HELP, labels=["stream"])
        # Bounds as prometheus_client writes them (``-300.0``, ``0.0``, ``+Inf``).
        bounds = [repr(float(bound)) for bound in self._bounds_s] + ["+Inf"]
        for stream in sorted(counts):
            cumulative = itertools.accumulate(counts[stream])
            lag.add_metric([stream], list(zip(bounds, cumulative, strict=True)), None)
            late.add_metric([stream], backfilled[stream])
        yield lag
        yield late


_LAG_HELP = (
    "Readings by arrival minus device timestamp, seconds: arrival is the gateway's "
    "arrived-at header, else the record's Kafka timestamp; below 0, the device clock is "
    "ahead. No _sum or _count: the +Inf bucket is the count."
)
_BACKFILLED_HELP = (
    "Readings whose device timestamp was more than CONSUMER_BACKFILL_AFTER (1 h) before "
    "their arrival: devices uploading what they buffered."
)
