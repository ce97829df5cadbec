"""Shared plumbing of the benchmarks: a private stack, a fresh database, topics, metrics.

Benchmarks run against real services only: ``KAFKA_BOOTSTRAP_SERVERS`` and
``DATABASE_URL`` when set, else a local stack of their own in ``.stack/bench``
(ports 59092/59093/55432), started for the run and stopped after it.
"""

from __future__ import annotations

import asyncio
import re
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from consumers.migrate import prepare_database
from deploy.local.services import (
    LocalStack,
    Services,
    create_database,
    drop_database,
    session_services,
    with_database,
)

BENCH_STACK = LocalStack("bench", 59092, 59093, 55432)


def say(message: str) -> None:
    """Progress for people, on stderr (stdout's last line is the JSON result)."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BenchDatabase:
    """A migrated database of its own for one benchmark run."""

    services: Services
    name: str

    @property
    def writer_url(self) -> str:
        """Writer role on the run's database."""
        return with_database(self.services.writer_url, self.name)

    @property
    def reader_url(self) -> str:
        """Read-only role on the run's database."""
        return with_database(self.services.reader_url, self.name)


@contextmanager
def bench_services(stack: LocalStack = BENCH_STACK) -> Iterator[Services]:
    """Kafka and PostgreSQL for a benchmark run (a private local stack unless given)."""
    with session_services(stack) as services:
        yield services


@contextmanager
def fresh_database(services: Services, prefix: str) -> Iterator[BenchDatabase]:
    """A new database with every migration applied; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    create_database(services, name)
    database = BenchDatabase(services, name)
    try:
        prepare_database(database.writer_url)
        yield database
    finally:
        drop_database(services, name)


def scrape(url: str) -> str:
    """The Prometheus text at ``url``."""
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 -- loopback URL we built
        text: str = response.read().decode()
        return text


def metric_value(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` whose label set contains ``labels``."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    for match in pattern.finditer(text):
        if labels in (match.group(1) or ""):
            total += float(match.group(2))
    return total


def histogram_quantile(text: str, name: str, quantile: float) -> float | None:
    """Quantile of a Prometheus histogram, interpolated inside its bucket (as PromQL does)."""
    pattern = re.compile(
        rf'^{re.escape(name)}_bucket\{{[^}}]*le="([^"]+)"[^}}]*\}} (\S+)$', re.MULTILINE
    )
    buckets: dict[float, float] = {}
    for match in pattern.finditer(text):
        bound = float("inf") if match.group(1) == "+Inf" else float(match.group(1))
        buckets[bound] = buckets.get(bound, 0.0) + float(match.group(2))
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total == 0:
        return None
    rank = quantile * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


async def produce_by_partition(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes, bytes]],
    partitions: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Publish ``(key, value)`` pairs fast: whole record batches per partition, acks=all.

    Each key goes to the partition Kafka's default partitioner picks for it,
    as for any producer, so one device's records stay in order. ``progress``
    is called with the count sent so far, every 200,000 records.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, max_batch_size=1 << 20
    )
    await producer.start()
    partitioner = DefaultPartitioner()
    parts = list(range(partitions))
    try:
        batches: dict[int, Any] = {}
        pending = []
        for i, (key, value) in enumerate(records):
            part = partitioner(key, parts, parts)
            batch = batches.get(part)
            if batch is None:
                batch = batches[part] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                pending.append(await producer.send_batch(batch, topic, partition=part))
                batch = batches[part] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            if progress is not None and i and i % 200_000 == 0:
                progress(i)
            if len(pending) > 64:  # bounded: wait for acks before buffering more
                await asyncio.gather(*pending)
                pending.clear()
        for part, batch in batches.items():
            batch.close()
            pending.append(await producer.send_batch(batch, topic, partition=part))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def json_line(result: dict[str, Any]) -> str:
    """The final JSON line of a benchmark."""
    import json

    return json.dumps(result, sort_keys=False)
