"""A worker killed with SIGKILL: a surviving worker takes its partitions over within seconds.

A killed worker never leaves its group; the group coordinator notices only
when the worker's session times out (``CONSUMER_SESSION_TIMEOUT_MS``). Until
then its partitions are read by nobody. Its own module: the test kills a
worker it started, and its topics see nobody else's records.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka.partitioner import DefaultPartitioner

from deploy.local.kafka_tools import produce
from deploy.local.prometheus_text import metric_value, scrape
from deploy.local.services import free_port
from tests.conftest import ModuleEnv, wait_for

PARTITIONS = 3  # the env fixture's topics
#: The longest a killed worker's partitions may go unread: the 3 s session
#: timeout, the rebalance and one batch, with room for a loaded CI machine. The
#: former 10 s session with 3 s heartbeats (expiry 7 to 10 s after a kill) fails it.
TAKEOVER_BOUND_S = 6.0


def _keys_per_partition(prefix: str) -> list[bytes]:
    """One key for each partition, as the default partitioner places keys."""
    partitioner = DefaultPartitioner()
    parts = list(range(PARTITIONS))
    found: dict[int, bytes] = {}
    i = 0
    while len(found) < PARTITIONS:
        key = f"{prefix}-{i}".encode()
        found.setdefault(partitioner(key, parts, parts), key)
        i += 1
    return [found[p] for p in parts]


def _reading(meter_id: str) -> bytes:
    stamp = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    return orjson.dumps(
        {
            "meterId": meter_id,
            "kwhConsumedAc": 0.5,
            "voltage": 230,
            "timestamp": stamp.isoformat().replace("+00:00", "Z"),
        }
    )


def _assigned(port: int) -> float:
    try:
        text = scrape(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return 0.0  # still starting: no endpoint yet
    return metric_value(text, "energy_consumer_assigned_partitions")


def _stored(env: ModuleEnv, keys: list[bytes]) -> int:
    count: int = env.query(
        "SELECT count(*) FROM meter_readings_history WHERE meter_id = ANY(%s)",
        ([k.decode() for k in keys],),
    )[0][0]
    return count


def test_a_killed_workers_partitions_are_taken_over_within_seconds(env: ModuleEnv) -> None:
    ports = [free_port(), free_port()]
    workers = [env.start_consumer("meter", CONSUMER_METRICS_PORT=str(p)) for p in ports]
    # Both are members of one settled generation: each owns some partitions, together all.
    wait_for(
        lambda: (
            all(_assigned(p) > 0 for p in ports) and sum(_assigned(p) for p in ports) == PARTITIONS
        ),
        timeout_s=60,
        explain=lambda: f"assigned per worker: {[_assigned(p) for p in ports]}",
    )
    warm = _keys_per_partition("FO-WARM")
    produce(
        env.services.kafka_bootstrap, env.topics.meter, [(k, _reading(k.decode())) for k in warm]
    )
    # Every partition is being consumed before the kill.
    wait_for(lambda: _stored(env, warm) == PARTITIONS)

    killed_at = time.monotonic()
    os.kill(workers[0].pid, signal.SIGKILL)
    workers[0].wait(timeout=10)
    after = _keys_per_partition("FO-AFTER")
    produce(
        env.services.kafka_bootstrap, env.topics.meter, [(k, _reading(k.decode())) for k in after]
    )
    # One reading per partition: the killed worker's partitions included.
    wait_for(
        lambda: _stored(env, after) == PARTITIONS,
        timeout_s=60,
        interval_s=0.05,
        explain=lambda: f"stored {_stored(env, after)} of {PARTITIONS}",
    )
    took = time.monotonic() - killed_at
    assert took < TAKEOVER_BOUND_S, f"partitions unread for {took:.1f} s after the kill"
    assert workers[1].poll() is None
