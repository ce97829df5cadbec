"""Consumer catch-up: a pre-filled topic drained into committed history and live status.

    python -m bench.consumer_throughput [--events 2000000] [--devices 10000] [--registers]

1. fills a fresh 12-partition topic with N vehicle heartbeats from D devices
   (one per device per minute, realistic values, keyed by device id); with
   ``--registers`` each carries the vehicle's cumulative register
   (``kwhRegisterDc``) instead of the minute's energy, which the consumers
   turn into counted increases;
2. baseline: a plain binary COPY of the same rows into a table of the same
   shape (same indexes), committed every 50,000 rows;
3. runs ``python -m consumers vehicle`` as in production, one process per core
   in one consumer group by default (``--workers``), and times it from launch
   until the group's committed offsets cover all N events: the last batch's
   PostgreSQL transaction and its offsets are committed inside the measured
   time. Meanwhile it samples the workers' RSS and CPU, and reads their
   metrics (commit latency) at the end;
4. checks the result: the committed offsets add up to N, history holds N
   rows, live status D rows; with ``--registers``, the energy counted in
   history and in the rollups equals the registers' increases.

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bench.procstat import CpuMeter, PeakRss
from bench.report import json_line, say
from consumers.tables import VEHICLE_TABLE
from deploy.local.kafka_tools import create_topics, delete_topics, produce_by_partition
from deploy.local.prometheus_text import histogram_quantile, metric_value, scrape
from deploy.local.services import (
    BENCH_STACK,
    ROOT,
    Database,
    free_port,
    fresh_database,
    session_services,
)
from schemas import DEFAULT_PARTITIONS, dlq_topic

PARTITIONS = DEFAULT_PARTITIONS
#: How often the committed offsets are read: the clock's resolution.
POLL_S = 0.05
Row = tuple[Any, ...]


def generate(
    events: int, devices: int, seed: int = 7, registers: bool = False
) -> Iterator[tuple[Row, bytes]]:
    """Heartbeats minute by minute, every device each minute, ending a minute ago.

    Yields each reading's row (for the COPY baseline) and JSON value (for
    Kafka), lazily: a full day (28.8 M) would not fit in memory at once.
    The same arguments give the same readings, so the topic and the baseline
    see the same rows. With ``registers``, each reading carries the vehicle's
    cumulative register (kWh, 4 decimals) instead of the minute's energy.
    """
    rng = random.Random(seed)
    minutes = -(-events // devices)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes + 1)
    soc = [rng.uniform(10, 60) for _ in range(devices)]
    names = [f"V{device:05d}" for device in range(devices)]
    counters = [round(rng.uniform(0, 50_000), 4) for _ in range(devices)]
    produced = 0
    for minute in range(minutes):
        ts = start + timedelta(minutes=minute)
        stamp = ts.isoformat().replace("+00:00", "Z")
        for device in range(devices):
            if produced == events:
                return
            produced += 1
            charging = (minute + device) % 180 < 90
            kwh = round(rng.uniform(0.1, 0.35), 4) if charging else 0.0
            soc[device] = min(100.0, soc[device] + kwh * 1.5) if charging else soc[device]
            temp = round(25 + (10 if charging else 0) + rng.uniform(-2, 2), 2)
            vehicle_id = names[device]
            event: dict[str, Any] = {"vehicleId": vehicle_id, "soc": round(soc[device], 2)}
            row: Row
            if registers:
                counters[device] = round(counters[device] + kwh, 4)
                event["kwhRegisterDc"] = counters[device]
                row = (vehicle_id, ts, event["soc"], 0.0, temp, counters[device], None)
            else:
                event["kwhDeliveredDc"] = kwh
                row = (vehicle_id, ts, event["soc"], kwh, temp, None, None)
            event["batteryTemp"] = temp
            event["timestamp"] = stamp
            yield row, orjson.dumps(event)


async def fill_topic(bootstrap: str, topic: str, args: argparse.Namespace) -> float:
    """Produce every heartbeat keyed by device id, in per-partition batches; returns seconds."""
    started = time.perf_counter()
    await produce_by_partition(
        bootstrap,
        topic,
        (
            (row[0].encode(), value)
            for row, value in generate(args.events, args.devices, registers=args.registers)
        ),
        PARTITIONS,
        progress=lambda sent: say(f"  produced {sent:,} events"),
    )
    return time.perf_counter() - started


def copy_baseline(database: Database, args: argparse.Namespace, chunk: int = 50_000) -> float:
    """Rows per second of a plain binary COPY into a table shaped like history.

    Only the COPY and its commits are timed: each chunk of rows is generated
    before the clock runs for it.
    """
    heartbeats = generate(args.events, args.devices, registers=args.registers)
    elapsed = 0.0
    with psycopg.connect(database.writer_url) as conn:
        conn.execute("CREATE TABLE copy_baseline (LIKE vehicle_readings_history INCLUDING ALL)")
        conn.commit()
        while rows := [row for row, _ in itertools.islice(heartbeats, chunk)]:
            started = time.perf_counter()
            with (
                conn.cursor() as cur,
                cur.copy(VEHICLE_TABLE.copy_history("copy_baseline")) as copy,
            ):
                copy.set_types(VEHICLE_TABLE.copy_types)
                for row in rows:
                    copy.write_row(row)
            conn.commit()
            elapsed += time.perf_counter() - started
        conn.execute("DROP TABLE copy_baseline")
        conn.commit()
    rate: float = args.events / elapsed
    return rate


async def committed_offsets(admin: AIOKafkaAdminClient, group: str, topic: str) -> int:
    """Sum of ``group``'s committed offsets on ``topic``: records committed end to end.

    The topic starts empty, so this is the count of records whose PostgreSQL
    transaction committed (a worker commits offsets only after it).
    """
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def launch_workers(
    database: Database, topic: str, ports: list[int]
) -> list[subprocess.Popen[bytes]]:
    """``python -m consumers vehicle`` per port (its metrics port), in one consumer group.

    ``BENCH_PROFILE=<file>`` runs the first worker under cProfile (stats at its clean exit).
    """
    profile = os.environ.get("BENCH_PROFILE")
    procs = []
    for n, port in enumerate(ports):
        env = dict(os.environ)
        env.update(
            CONSUMER_KAFKA_BOOTSTRAP_SERVERS=database.services.kafka_bootstrap,
            CONSUMER_DATABASE_URL=database.writer_url,
            CONSUMER_VEHICLE_TOPIC=topic,
            CONSUMER_GROUP_ID_PREFIX=database.name,
            CONSUMER_METRICS_PORT=str(port),
            CONSUMER_LOG_LEVEL="WARNING",
        )
        profiler = ["-m", "cProfile", "-o", profile] if profile and n == 0 else []
        procs.append(
            subprocess.Popen(
                [sys.executable, *profiler, "-m", "consumers", "vehicle"], cwd=ROOT, env=env
            )
        )
    return procs


async def run_consumer(
    database: Database, topic: str, events: int, timeout_s: float, workers: int = 1
) -> dict[str, Any]:
    """Drain ``topic`` with ``workers`` real worker processes in one group; the run's figures.

    The clock runs from launching the workers until the group's committed
    offsets cover every event (polled every ``POLL_S``), so the last batch's
    PostgreSQL commit and its offsets are inside the measured time.
    """
    ports = [free_port() for _ in range(workers)]
    group = f"{database.name}-vehicle"  # the worker's group: <prefix>-<stream>
    admin = AIOKafkaAdminClient(bootstrap_servers=database.services.kafka_bootstrap)
    await admin.start()
    launched = time.perf_counter()
    procs = launch_workers(database, topic, ports)
    cpu = CpuMeter({f"worker-{n}": proc.pid for n, proc in enumerate(procs)})
    cpu.start()
    first_commit: float | None = None
    committed = 0
    last_report = done = launched
    try:
        with PeakRss(proc.pid for proc in procs) as rss:
            while done - launched < timeout_s:
                if any(proc.poll() is not None for proc in procs):
                    raise RuntimeError("a consumer exited before the topic was drained")
                try:
                    committed = await committed_offsets(admin, group, topic)
                except KafkaError as exc:
                    if not exc.retriable:  # e.g. no coordinator before the group's first join
                        raise
                done = time.perf_counter()
                if committed and first_commit is None:
                    first_commit = done
                if committed >= events:
                    break
                if done - last_report >= 2:
                    rate = committed / (done - launched)
                    say(f"  committed {committed:,}/{events:,} ({rate:,.0f} events/s)")
                    last_report = done
                await asyncio.sleep(POLL_S)
        usage = cpu.stop()
        texts = [scrape(f"http://127.0.0.1:{port}/metrics") for port in ports]
    finally:
        await admin.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
    if committed < events or first_commit is None:
        raise RuntimeError(f"consumer did not finish in {timeout_s} s ({committed:,}/{events:,})")
    # The first commit already holds a batch: the run counts from launch for
    # the honest figure, from the first commit for the steady rate.
    merged = "\n".join(texts)
    p50 = histogram_quantile(merged, "energy_consumer_batch_commit_seconds", 0.5)
    p99 = histogram_quantile(merged, "energy_consumer_batch_commit_seconds", 0.99)
    return {
        "workers": workers,
        "elapsed_s": round(done - launched, 2),
        "events_per_s": round(events / (done - launched)),
        "steady_events_per_s": round(events / max(done - first_commit, 1e-9)),
        "commit_p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "commit_p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "batches": int(metric_value(merged, "energy_consumer_batch_size_count")),
        "committed_offsets": committed,
        "consumer_rss_mb": round(max(rss.mib().values()), 1),
        # CPU per event is steadier than events/s on a shared machine.
        "consumer_cpu_us_per_event": round(sum(usage.seconds.values()) / events * 1e6, 1),
        "machine_busy_percent": usage.machine_percent,
    }


def measure(
    database: Database, topic: str, args: argparse.Namespace
) -> tuple[float, dict[str, Any], bool]:
    """Fill ``topic``, time the COPY baseline and the consumers; (COPY rows/s, figures, exact)."""
    say(f"filling {topic} ({PARTITIONS} partitions)")
    fill_s = asyncio.run(fill_topic(database.services.kafka_bootstrap, topic, args))
    say(f"  filled in {fill_s:.1f} s ({args.events / fill_s:,.0f} events/s)")

    say("baseline: plain binary COPY of the same rows")
    copy_rate = copy_baseline(database, args)
    say(f"  {copy_rate:,.0f} rows/s")

    say("consumer: draining the topic into history and live status")
    run = asyncio.run(run_consumer(database, topic, args.events, args.timeout, args.workers))
    with psycopg.connect(database.writer_url) as conn:
        history = conn.execute(
            "SELECT count(*), coalesce(sum(kwh_delivered_dc), 0) FROM vehicle_readings_history"
        ).fetchone()
        rollup = conn.execute(
            "SELECT coalesce(sum(kwh_delivered_dc), 0) FROM vehicle_hourly_rollup"
        ).fetchone()
        live = conn.execute("SELECT count(*) FROM vehicle_live_status").fetchone()
    history_rows, history_kwh = history if history else (0, 0.0)
    rollup_kwh = rollup[0] if rollup else 0.0
    live_rows = live[0] if live else 0
    want_kwh = expected_energy(args)
    say(
        f"  committed offsets {run['committed_offsets']:,}, history rows {history_rows:,}, "
        f"live rows {live_rows:,}, energy {history_kwh:,.4f} kWh in history, "
        f"{rollup_kwh:,.4f} in rollups, {want_kwh:,.4f} sent"
    )
    run["energy_kwh"] = round(history_kwh, 4)
    exact = (
        run["committed_offsets"] == args.events
        and history_rows == args.events
        and live_rows == min(args.devices, args.events)
        and math.isclose(history_kwh, want_kwh, rel_tol=1e-9, abs_tol=1e-6)
        and math.isclose(rollup_kwh, want_kwh, rel_tol=1e-9, abs_tol=1e-6)
    )
    return copy_rate, run, exact


def expected_energy(args: argparse.Namespace) -> float:
    """The energy the readings carry: the minutes' energies, or each register's increase
    from its device's first reading (which counts 0) to its last."""
    if not args.registers:
        return math.fsum(row[3] for row, _ in generate(args.events, args.devices))
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for row, _ in generate(args.events, args.devices, registers=True):
        first.setdefault(row[0], row[5])
        last[row[0]] = row[5]
    return math.fsum(last[d] - first[d] for d in last)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print progress to stderr and the JSON result last on stdout."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed for the drain")
    parser.add_argument(
        "--registers",
        action="store_true",
        help="readings carry cumulative registers (kwhRegisterDc) instead of interval energy",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes in the consumer group (default: one per core)",
    )
    args = parser.parse_args(argv)

    form = "cumulative registers" if args.registers else "interval energy"
    say(f"{args.events:,} heartbeats from {args.devices:,} vehicles ({form})")
    with (
        session_services(BENCH_STACK) as services,
        fresh_database(services, "bench_consumer") as database,
    ):
        topic = f"bench.{database.name}.telemetry.vehicle.v1"
        create_topics(services.kafka_bootstrap, [topic], PARTITIONS)
        create_topics(services.kafka_bootstrap, [dlq_topic(topic)])
        try:
            copy_rate, run, exact = measure(database, topic, args)
        finally:
            delete_topics(services.kafka_bootstrap, [topic, dlq_topic(topic)])

    result = {
        "events": args.events,
        "devices": args.devices,
        "mode": "registers" if args.registers else "interval",
        **run,
        "copy_rows_per_s": round(copy_rate),
        "ratio": round(run["events_per_s"] / copy_rate, 3),
        "exact": exact,
    }
    print(json_line(result))
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
