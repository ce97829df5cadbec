"""A worker's life as an operator sees it: it stops cleanly on SIGTERM, even mid-outage.

Its own module: the tests stop the workers they start, and nothing else may
depend on them.
"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from deploy.local.kafka_tools import produce, read_all
from deploy.local.prometheus_text import metric_value, scrape
from deploy.local.services import crash_postgres, free_port, start_infra
from schemas import dlq_topic
from tests.conftest import ModuleEnv, wait_for


def _reading(meter_id: str, minutes_ago: int) -> bytes:
    stamp = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)
    return orjson.dumps(
        {
            "meterId": meter_id,
            "kwhConsumedAc": 0.5,
            "voltage": 230,
            "timestamp": stamp.isoformat().replace("+00:00", "Z"),
        }
    )


def _metric(port: int, name: str) -> float:
    """Sum of every sample of ``name`` on a worker's metrics endpoint (0 if absent)."""
    try:
        text = scrape(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return 0.0  # the worker is still starting: no endpoint yet
    return metric_value(text, name)


def _stored(env: ModuleEnv, meter_id: str) -> int:
    count: int = env.query(
        "SELECT count(*) FROM meter_readings_history WHERE meter_id = %s", (meter_id,)
    )[0][0]
    return count


def test_workers_stop_gracefully_on_sigterm(env: ModuleEnv) -> None:
    ports = {stream: free_port() for stream in ("meter", "vehicle", "links")}
    workers = [
        env.start_consumer(stream, CONSUMER_METRICS_PORT=str(port))
        for stream, port in ports.items()
    ]
    # Every worker has joined its group (so its signal handlers are installed).
    wait_for(
        lambda: all(_metric(p, "energy_consumer_assigned_partitions") > 0 for p in ports.values())
    )
    produce(env.services.kafka_bootstrap, env.topics.meter, [(b"LC-1", _reading("LC-1", 1))])
    # The meter worker has written a batch: it is really working.
    wait_for(lambda: _stored(env, "LC-1") == 1)
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(timeout=30) for proc in workers] == [0, 0, 0]


def test_sigterm_during_a_database_outage_exits_0_and_commits_nothing(env: ModuleEnv) -> None:
    port = free_port()
    # Nothing listens on this database port: PostgreSQL is "down" for this worker.
    worker = env.start_consumer(
        "meter",
        CONSUMER_DATABASE_URL=f"postgresql://nobody@127.0.0.1:{free_port()}/none",
        CONSUMER_METRICS_PORT=str(port),
        CONSUMER_GROUP_ID_PREFIX=f"{env.name}-outage",
    )
    produce(env.services.kafka_bootstrap, env.topics.meter, [(b"LC-2", _reading("LC-2", 1))])
    # It read the record and is retrying the write with back-off.
    wait_for(lambda: _metric(port, "energy_consumer_retries_total") >= 1, timeout_s=60)
    worker.send_signal(signal.SIGTERM)
    try:
        code = worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise
    assert code == 0
    # Nothing was stored, so nothing may have been committed: a worker with a
    # database reads the record again and stores it.
    env.start_consumer("meter", CONSUMER_GROUP_ID_PREFIX=f"{env.name}-outage")
    wait_for(lambda: _stored(env, "LC-2") == 1)


def test_a_held_lock_times_out_is_retried_and_the_batch_lands_once_released(
    env: ModuleEnv,
) -> None:
    port = free_port()
    worker = env.start_consumer(
        "meter",
        CONSUMER_LOCK_TIMEOUT_S="0.5",
        CONSUMER_METRICS_PORT=str(port),
        CONSUMER_GROUP_ID_PREFIX=f"{env.name}-locked",
    )
    wait_for(lambda: _metric(port, "energy_consumer_assigned_partitions") > 0)
    with env.connect() as holder:
        # An operator's (or a migration's) long lock on live status.
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE meter_live_status IN ACCESS EXCLUSIVE MODE")
        produce(env.services.kafka_bootstrap, env.topics.meter, [(b"LC-3", _reading("LC-3", 1))])
        # The write gives up waiting for the lock and is retried, again and again.
        wait_for(lambda: _metric(port, "energy_consumer_retries_total") >= 2, timeout_s=60)
        assert worker.poll() is None
        holder.execute("ROLLBACK")
    wait_for(lambda: _stored(env, "LC-3") == 1)
    assert env.query("SELECT count(*) FROM meter_live_status WHERE meter_id = 'LC-3'") == [(1,)]
    assert _metric(port, "energy_consumer_dead_lettered_total") == 0


@pytest.mark.timeout(300)
def test_an_outage_longer_than_max_poll_interval_ends_exact(env: ModuleEnv) -> None:
    """PostgreSQL down 2.5 times ``max.poll.interval.ms``: the workers drop out of the
    group holding unwritten batches, rejoin, and every reading lands exactly once;
    nothing is dead-lettered."""
    stack = env.services.stack
    assert stack is not None, "this test stops and restarts the stack's PostgreSQL"
    group = f"{env.name}-long"
    ports = [free_port(), free_port()]
    workers = [
        env.start_consumer(
            "meter",
            CONSUMER_METRICS_PORT=str(port),
            CONSUMER_GROUP_ID_PREFIX=group,
            CONSUMER_MAX_POLL_INTERVAL_MS="8000",
            CONSUMER_BATCH_MAX_RECORDS="500",
        )
        for port in ports
    ]
    wait_for(
        lambda: all(_metric(p, "energy_consumer_assigned_partitions") > 0 for p in ports),
        timeout_s=60,
    )
    readings = [
        (f"LO-{m:03d}".encode(), _reading(f"LO-{m:03d}", minute))
        for minute in range(1, 11)
        for m in range(300)
    ]
    repeats = readings[::15]
    produce(env.services.kafka_bootstrap, env.topics.meter, readings)
    crash_postgres(stack)
    produce(env.services.kafka_bootstrap, env.topics.meter, repeats)
    wait_for(
        lambda: sum(_metric(p, "energy_consumer_retries_total") for p in ports) >= 1,
        timeout_s=60,
    )
    time.sleep(20)  # the outage itself: longer than max.poll.interval.ms (8 s)
    start_infra(stack)
    wait_for(
        lambda: (
            env.query("SELECT count(*) FROM meter_readings_history WHERE meter_id LIKE 'LO-%'")[0][
                0
            ]
            == len(readings)
        ),
        timeout_s=120,
    )
    assert [w.poll() for w in workers] == [None, None]
    counts = env.query(
        "SELECT meter_id, count(*), sum(kwh_consumed_ac) FROM meter_readings_history"
        " WHERE meter_id LIKE 'LO-%' GROUP BY meter_id"
    )
    assert {m: (n, kwh) for m, n, kwh in counts} == {f"LO-{m:03d}": (10, 5.0) for m in range(300)}
    assert read_all(env.services.kafka_bootstrap, dlq_topic(env.topics.meter), expected=0) == []
