"""Exactly-once effect under crashes: kill -9 of workers, PostgreSQL and Kafka restarts.

Two vehicle workers share one consumer group while 200,000 heartbeats, with
duplicates and poison records mixed in, are produced. Meanwhile the workers are
killed with SIGKILL at random moments and restarted, PostgreSQL is stopped
the hard way (immediate shutdown) and restarted, and the Kafka broker is
SIGKILLed and restarted. Every other worker, and the partition maintenance
running all along, have their clocks 200 days ahead. At the end, per device,
history counts and energy sums are exactly what was produced, live status is
the newest reading, the dead-letter topic holds exactly the injected poison,
each once, and maintenance dropped nothing.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy.local.kafka_tools import produce_by_partition, read_all
from deploy.local.services import crash_kafka, crash_postgres, start_infra
from schemas import dlq_topic
from tests.conftest import WORKER_LOGS, ModuleEnv, skewed_clock, wait_for

DEVICES = 1000
MINUTES = 200
EVENTS = DEVICES * MINUTES
PARTITIONS = 3  # the env fixture's topics


def _events(rng: random.Random) -> tuple[list[tuple[bytes, bytes]], dict[str, Any]]:
    """Heartbeats (key, value) in production order, with duplicates and poison mixed in.

    Energy values are multiples of 1/64, so sums are exact in any order. Odd
    devices send cumulative registers (``kwhRegisterDc``): each counts its
    increase, the first reading 0.
    """
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=MINUTES + 5)
    truth: dict[str, Any] = {"count": Counter(), "sum": defaultdict(float), "newest": {}}
    records: list[tuple[bytes, bytes]] = []
    registers = [1000 + device / 64 for device in range(DEVICES)]
    for minute in range(MINUTES):
        stamp = (start + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")
        for device in range(DEVICES):
            vid = f"CV{device:04d}"
            kwh = rng.randrange(0, 64) / 64
            soc = round(20 + minute * 0.3, 1)
            event: dict[str, Any] = {"vehicleId": vid, "soc": soc}
            if device % 2:
                registers[device] += kwh
                event["kwhRegisterDc"] = registers[device]
                kwh = kwh if minute else 0.0  # the first reading opens the register
            else:
                event["kwhDeliveredDc"] = kwh
            value = orjson.dumps({**event, "batteryTemp": 30, "timestamp": stamp})
            records.append((vid.encode(), value))
            truth["count"][vid] += 1
            truth["sum"][vid] += kwh
            truth["newest"][vid] = (stamp, soc)
    # Device retries: the same bytes again, later in the stream.
    for _ in range(3000):
        records.insert(rng.randrange(len(records) // 2, len(records)), rng.choice(records[:-1]))
    poison: list[bytes] = []
    for i in range(60):
        kind = i % 3
        if kind == 0:
            value = b'{"vehicleId": "CV0001", "soc": ' + str(i).encode()  # truncated JSON
        elif kind == 1:
            value = orjson.dumps(
                {
                    "vehicleId": f"CV{i:04d}",
                    "soc": 150,
                    "kwhDeliveredDc": 1,
                    "batteryTemp": 30,
                    "timestamp": "2026-01-01T00:00:00Z",
                    "n": i,
                }
            )
        else:
            value = orjson.dumps(
                {
                    "meterId": f"M{i}",
                    "kwhConsumedAc": 1,
                    "voltage": 230,
                    "timestamp": "2026-01-01T00:00:00Z",
                }
            )
        poison.append(value)
        records.insert(rng.randrange(len(records)), (f"CV{i:04d}".encode(), value))
    truth["poison"] = poison
    return records, truth


def _history(env: ModuleEnv) -> int:
    count: int = env.query("SELECT count(*) FROM vehicle_readings_history")[0][0]
    return count


def _progress(env: ModuleEnv, workers: list[subprocess.Popen[bytes]]) -> str:
    """Where the run stands: stored rows, the group's offsets per partition, the workers."""

    async def offsets() -> str:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=env.services.kafka_bootstrap,
            group_id=f"{env.name}-vehicle",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            parts = [TopicPartition(env.topics.vehicle, p) for p in range(PARTITIONS)]
            ends = await consumer.end_offsets(parts)
            committed = [await consumer.committed(tp) for tp in parts]
            return ", ".join(
                f"p{tp.partition} committed {done} of {ends[tp]}"
                for tp, done in zip(parts, committed, strict=True)
            )
        finally:
            await consumer.stop()

    alive = [w.pid for w in workers if w.poll() is None]
    return (
        f"history {_history(env):,} of {EVENTS:,}; {asyncio.run(offsets())};"
        f" workers alive {alive} (logs in {WORKER_LOGS}/{env.name}-vehicle-*.log)"
    )


@pytest.mark.slow
# Well above the waits below (at most 240 s for history, 150 s for the DLQ, plus
# restarts), so a failure is reported by the assertion that saw it, not by a kill.
@pytest.mark.timeout(900)
def test_exact_after_kills_and_restarts(env: ModuleEnv) -> None:
    stack = env.services.stack
    assert stack is not None, "fault injection needs the local stack (it restarts the servers)"
    rng = random.Random(20261126)
    records, truth = _events(rng)
    quarter = len(records) // 4
    parts = [records[i * quarter : (i + 1) * quarter if i < 3 else None] for i in range(4)]

    workers: list[subprocess.Popen[bytes]] = []
    started = 0

    def start_worker() -> None:
        # Every other worker runs with its clock 200 days ahead: readings are judged
        # by the time Kafka accepted them, so its clock must change nothing.
        nonlocal started
        skew = skewed_clock(days=200) if started % 2 == 0 else {}
        workers.append(env.start_consumer("vehicle", CONSUMER_BATCH_MAX_RECORDS="2000", **skew))
        started += 1

    # Partition maintenance all along, its clock 200 days ahead too: it judges by
    # the database's date, so it must drop nothing.
    maintenance = env.start_consumer(
        "maintain", "--every", "5", CONSUMER_METRICS_PORT="0", **skewed_clock(days=200)
    )

    def kill_one() -> None:
        live = [w for w in workers if w.poll() is None]
        victim = rng.choice(live)
        time.sleep(rng.uniform(0.2, 1.5))  # a random moment in its work
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        workers.remove(victim)
        start_worker()

    start_worker()
    start_worker()
    bootstrap = env.services.kafka_bootstrap
    topic = env.topics.vehicle
    kills = 0

    asyncio.run(produce_by_partition(bootstrap, topic, parts[0], PARTITIONS))
    kill_one()
    kill_one()
    kills += 2

    asyncio.run(produce_by_partition(bootstrap, topic, parts[1], PARTITIONS))
    time.sleep(rng.uniform(0.5, 1.5))
    crash_postgres(stack)  # workers now retry with back-off; nothing may be dead-lettered
    time.sleep(2)
    start_infra(stack)
    kill_one()
    kills += 1

    asyncio.run(produce_by_partition(bootstrap, topic, parts[2], PARTITIONS))
    time.sleep(rng.uniform(0.5, 1.5))
    crash_kafka(stack)
    time.sleep(2)
    start_infra(stack)
    kill_one()
    kills += 1

    asyncio.run(produce_by_partition(bootstrap, topic, parts[3], PARTITIONS))
    kill_one()
    kill_one()
    kills += 2

    wait_for(
        lambda: _history(env) == EVENTS,
        timeout_s=240,
        interval_s=1,
        explain=lambda: _progress(env, workers),
    )
    # A worker SIGKILLed inside its dead-letter transaction leaves it open until the
    # broker aborts it (the transaction timeout, 60 s); until then read_committed
    # readers see no later dead letter of that partition. Wait past it.
    dead = read_all(bootstrap, dlq_topic(topic), expected=len(truth["poison"]), timeout_s=150)
    assert kills == 6
    maintenance.send_signal(signal.SIGTERM)
    assert maintenance.wait(timeout=30) == 0
    (log,) = WORKER_LOGS.glob(f"{env.name}-maintain-*.log")
    assert "partition maintenance every 5 s" in log.read_text()
    assert "dropped partition" not in log.read_text()

    rows = env.query(
        "SELECT vehicle_id, count(*), sum(kwh_delivered_dc) FROM vehicle_readings_history"
        " GROUP BY vehicle_id"
    )
    assert {vid: (n, total) for vid, n, total in rows} == {
        vid: (truth["count"][vid], truth["sum"][vid]) for vid in truth["count"]
    }
    # The rollups every view reads hold the same energy, registers counted once.
    assert env.query(
        "SELECT vehicle_id, sum(readings)::int, sum(kwh_delivered_dc) FROM vehicle_hourly_rollup"
        " GROUP BY vehicle_id ORDER BY vehicle_id"
    ) == [(vid, n, total) for vid, n, total in sorted(rows)]
    live = env.query("SELECT vehicle_id, recorded_at, soc FROM vehicle_live_status")
    assert {vid: (ts.isoformat().replace("+00:00", "Z"), soc) for vid, ts, soc in live} == truth[
        "newest"
    ]
    assert Counter(r.value for r in dead) == Counter(truth["poison"])
    # For people reading the run (pytest -s): what was survived and what was checked.
    print(
        f"\ncrash test: {len(records):,} records produced ({EVENTS:,} readings, 3,000 repeats,"
        f" {len(truth['poison'])} poison) through {len(workers)} workers; {kills} SIGKILLs,"
        " PostgreSQL crashed and restarted once, Kafka SIGKILLed and restarted once;"
        f" history {len(rows):,} devices x {MINUTES} readings (half of them cumulative"
        " registers) with exact sums in history and rollups, live status"
        f" newest for all {len(live):,}, DLQ {len(dead)} records = the poison, each once"
    )
