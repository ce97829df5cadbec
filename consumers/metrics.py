"""Prometheus metrics of the consumer workers (served on ``CONSUMER_METRICS_PORT``)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from consumers.arrival import ArrivalLag

EVENTS_CONSUMED = Counter(
    "energy_consumer_events_consumed_total", "Records read from Kafka.", ["stream"]
)
EVENTS_WRITTEN = Counter(
    "energy_consumer_events_written_total",
    "Events newly stored in history (or links applied).",
    ["stream"],
)
DUPLICATES = Counter(
    "energy_consumer_duplicates_total",
    "Events dropped because history already held that device and timestamp.",
    ["stream"],
)
DEAD_LETTERED = Counter(
    "energy_consumer_dead_lettered_total",
    "Poison events sent to the dead-letter topic.",
    ["stream", "reason"],
)
LINK_CLAIMS_CONTESTED = Counter(
    "energy_consumer_link_claims_contested_total",
    "Link claims that became contested: another claim starts at the same instant on the "
    "same vehicle (another meter) or the same meter (another vehicle); neither takes effect.",
)
REGISTER_NOTES = Counter(
    "energy_consumer_register_notes_total",
    "Register readings stored counting less than their increase, by why: reset (the register "
    "went down), jump (implausibly large increase), replaced (a declared device replacement).",
    ["stream", "note"],
)
LATE_READINGS = Counter(
    "energy_consumer_late_readings_total",
    "Readings stored at or before their device's newest one: each, and the reading after it, "
    "was counted again from history.",
    ["stream"],
)
RETRIES = Counter(
    "energy_consumer_retries_total",
    "Batches retried because PostgreSQL or Kafka was unavailable.",
    ["stream", "cause"],
)
COMMIT_FAILURES = Counter(
    "energy_consumer_offset_commit_failures_total",
    "Offset commits refused (e.g. after a rebalance); the batch is re-read and deduplicated.",
    ["stream"],
)
COMMIT_VISIBILITY_TIMEOUTS = Counter(
    "energy_consumer_commit_visibility_timeouts_total",
    "Batches whose transactionally committed offsets were not visible in time; "
    "a takeover in that window may dead-letter a record twice.",
    ["stream"],
)
ABANDONED = Counter(
    "energy_consumer_batches_abandoned_total",
    "Batches given up uncommitted because their partitions moved to another worker.",
    ["stream"],
)
BATCH_SIZE = Histogram(
    "energy_consumer_batch_size",
    "Records per batch.",
    ["stream"],
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000),
)
COMMIT_SECONDS = Histogram(
    "energy_consumer_batch_commit_seconds",
    "Time to write one batch to PostgreSQL and commit it.",
    ["stream"],
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10),
)
EVENT_AGE_SECONDS = Histogram(
    "energy_consumer_event_age_seconds",
    "Device timestamp to PostgreSQL commit of the newest event of each batch (freshness).",
    ["stream"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
#: ``energy_consumer_arrival_lag_seconds{stream}`` and
#: ``energy_consumer_backfilled_readings_total{stream}`` (see :mod:`consumers.arrival`).
ARRIVAL_LAG = ArrivalLag()
REGISTRY.register(ARRIVAL_LAG)
ASSIGNED_PARTITIONS = Gauge(
    "energy_consumer_assigned_partitions", "Partitions assigned to this worker.", ["stream"]
)
CONSUMER_LAG = Gauge(
    "energy_consumer_lag_records",
    "High watermark minus committed position, per partition.",
    ["stream", "partition"],
)
PARTITIONS_CREATED_ON_DEMAND = Counter(
    "energy_consumer_partitions_created_on_demand_total",
    "History partitions a writer had to create for a batch (maintenance fell behind).",
    ["stream"],
)
# Partition maintenance (``python -m consumers maintain --every``), one job for the database.
MAINTENANCE_FAILURES = Counter(
    "energy_maintenance_failures_total",
    "Partition maintenance runs that failed (they are retried at the next interval).",
)
MAINTENANCE_LAST_SUCCESS = Gauge(
    "energy_maintenance_last_success_timestamp_seconds",
    "Unix time of the last maintenance run that completed.",
)
PARTITION_LEAD_DAYS = Gauge(
    "energy_maintenance_partition_lead_days",
    "Days from the database's date to the last history partition (alert below 2).",
    ["table"],
)
PARTITIONS_DROPPED = Counter(
    "energy_maintenance_partitions_dropped_total",
    "History partitions dropped past the retention (each is also a WARNING log line).",
    ["table"],
)
ROWS_DROPPED = Counter(
    "energy_maintenance_rows_dropped_total",
    "History rows in the partitions dropped past the retention.",
    ["table"],
)
PARTITIONS_PENDING_DROP = Gauge(
    "energy_maintenance_partitions_pending_drop",
    "Partitions past retention left for later runs by the per-run cap.",
)
EVENT_LOOP_LAG = Histogram(
    "energy_consumer_event_loop_lag_seconds",
    "How late the worker's event loop ran a 100 ms timer: a stall as long as the "
    "session timeout delays heartbeats enough to cost the group membership.",
    ["stream"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10),
)
DLQ_OLDEST_TIMESTAMP = Gauge(
    "energy_consumer_dlq_oldest_timestamp_seconds",
    "Unix time of the oldest record still in the dead-letter topic (no sample when empty); "
    "dead letters expire with the topic's retention.",
    ["topic"],
)
DLQ_PROBE_FAILURES = Counter(
    "energy_consumer_dlq_probe_failures_total",
    "Probes of the dead-letter topic's oldest record that failed (retried at the next interval).",
    ["stream"],
)
