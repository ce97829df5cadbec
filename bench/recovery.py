"""Recovery after kill -9: how long a partition's records wait when a meter worker dies.

    python -m bench.recovery [--kills 4] [--rate 500] [--restart-delay 3]

Two meter workers share one consumer group on a 12-partition topic while
steady traffic (``--rate`` readings a second, spread over every partition) is
produced. One worker at a time is SIGKILLed and restarted, as a supervisor
would: alternately at once and after ``--restart-delay`` seconds. The group's
committed offsets are read every 100 ms; for each kill the figure is the
longest time any partition's committed offset stood still, from its last
advance before the kill until the group has settled again (both workers
assigned, every partition advancing). With records arriving on every
partition all the time, that is how long a partition's records went
unprocessed (plus one poll interval).

The same kills are run twice in one session, each phase with its own
consumer group: first with the group settings aiokafka uses by default (10 s
session, 3 s heartbeats, rebalance timeout = session), the former behaviour,
then with the workers' own defaults (``CONSUMER_SESSION_TIMEOUT_MS`` and
friends). After each phase the traffic stops and the group must commit every
record produced. Also reported: the longest event-loop stall any worker
measured (``energy_consumer_event_loop_lag_seconds``, as a histogram bucket
bound): heartbeats are sent from that loop.

Progress goes to stderr; the last stdout line is one JSON object. Exit code
1 if a phase lost records, or the new settings miss the 5 s target.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bench.report import json_line, say
from deploy.local.kafka_tools import create_topics, delete_topics
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
WORKERS = 2
POLL_S = 0.1
#: The longest a partition's records may wait after a kill.
TARGET_S = 5.0
#: aiokafka's defaults: what the workers ran with before they set their own.
FORMER_SETTINGS = {
    "CONSUMER_SESSION_TIMEOUT_MS": "10000",
    "CONSUMER_HEARTBEAT_INTERVAL_MS": "3000",
    "CONSUMER_REBALANCE_TIMEOUT_MS": "10000",
}
SETTLE_TIMEOUT_S = 90.0
DRAIN_TIMEOUT_S = 120.0


@dataclass
class Offsets:
    """The group's committed offsets as polled: per partition, when each advance was seen."""

    current: dict[int, int] = field(default_factory=dict)
    advances: dict[int, list[float]] = field(default_factory=dict)

    def update(self, seen: dict[int, int], at: float) -> None:
        """Record the offsets polled at monotonic time ``at``."""
        for partition, offset in seen.items():
            if offset > self.current.get(partition, -1):
                self.current[partition] = offset
                self.advances.setdefault(partition, []).append(at)

    def all_advanced_since(self, since: float) -> bool:
        """True when every partition's committed offset moved after ``since``."""
        return len(self.advances) == PARTITIONS and all(
            times[-1] > since for times in self.advances.values()
        )

    def longest_stall(self, kill_at: float, until: float) -> tuple[float, int]:
        """(seconds, partition) of the longest stand-still around a kill.

        Each partition's interval runs from its last advance before ``kill_at``
        through its advances up to ``until``.
        """
        worst, worst_partition = 0.0, -1
        for partition, times in self.advances.items():
            before = [t for t in times if t <= kill_at]
            points = [
                before[-1] if before else kill_at,
                *(t for t in times if kill_at < t <= until),
            ]
            points.append(until)
            gap = max(b - a for a, b in itertools.pairwise(points))
            if gap > worst:
                worst, worst_partition = gap, partition
        return worst, worst_partition


class Phase:
    """One consumer group of meter workers under traffic, killed and restarted in turn."""

    def __init__(self, database: Database, topic: str, label: str, env: dict[str, str]) -> None:
        self.database = database
        self.topic = topic
        self.prefix = f"{database.name}-{label}"
        self.group = f"{self.prefix}-meter"  # the worker's group: <prefix>-<stream>
        self.env = env
        self.ports = [free_port() for _ in range(WORKERS)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.offsets = Offsets()
        self.stall_bound = 0.0

    def start(self, n: int) -> subprocess.Popen[bytes]:
        """Launch worker ``n`` (on its metrics port)."""
        env = dict(os.environ)
        env.update(
            CONSUMER_KAFKA_BOOTSTRAP_SERVERS=self.database.services.kafka_bootstrap,
            CONSUMER_DATABASE_URL=self.database.writer_url,
            CONSUMER_METER_TOPIC=self.topic,
            CONSUMER_GROUP_ID_PREFIX=self.prefix,
            CONSUMER_METRICS_PORT=str(self.ports[n]),
            CONSUMER_LOG_LEVEL="WARNING",
            **self.env,
        )
        proc = subprocess.Popen([sys.executable, "-m", "consumers", "meter"], cwd=ROOT, env=env)
        if n < len(self.procs):
            self.procs[n] = proc
        else:
            self.procs.append(proc)
        return proc

    def assigned(self) -> list[float]:
        """Partitions each worker reports as its own (0 while it starts)."""
        counts = []
        for port in self.ports:
            try:
                text = scrape(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                counts.append(0.0)
                continue
            counts.append(metric_value(text, "energy_consumer_assigned_partitions"))
            # The upper bound of the highest bucket holding an observation.
            worst = histogram_quantile(text, "energy_consumer_event_loop_lag_seconds", 1.0)
            self.stall_bound = max(self.stall_bound, worst or 0.0)
        return counts

    async def poll_offsets(self, admin: AIOKafkaAdminClient) -> None:
        """Read the group's committed offsets into ``self.offsets``."""
        try:
            offsets = await admin.list_consumer_group_offsets(self.group)
        except KafkaError as exc:
            if not exc.retriable:  # e.g. no coordinator before the group's first join
                raise
            return
        seen = {tp.partition: m.offset for tp, m in offsets.items() if tp.topic == self.topic}
        self.offsets.update(seen, time.monotonic())

    async def until_settled(self, admin: AIOKafkaAdminClient, since: float) -> float:
        """Wait until every worker owns partitions and every partition advanced after ``since``."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            await self.poll_offsets(admin)
            counts = self.assigned()
            if (
                all(c > 0 for c in counts)
                and sum(counts) == PARTITIONS
                and self.offsets.all_advanced_since(since)
            ):
                return time.monotonic()
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a worker of {self.group} exited")
            await asyncio.sleep(POLL_S)
        raise RuntimeError(f"{self.group} did not settle within {SETTLE_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """SIGTERM every worker and wait for it."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


class Traffic:
    """Steady meter readings, spread over the partitions by device id, until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: int, devices: int = 1200) -> None:
        self.bootstrap, self.topic, self.rate, self.devices = bootstrap, topic, rate, devices
        self.sent = 0
        self._base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1)
        self._stop = asyncio.Event()

    def _record(self, n: int) -> tuple[bytes, bytes]:
        meter = f"RM{n % self.devices:05d}"
        stamp = self._base + timedelta(seconds=n // self.devices)
        value = {
            "meterId": meter,
            "kwhConsumedAc": 0.25,
            "voltage": 230,
            "timestamp": stamp.isoformat().replace("+00:00", "Z"),
        }
        return meter.encode(), orjson.dumps(value)

    async def run(self) -> None:
        """Send ``rate`` records a second in 50 ms steps, acks=all, until :meth:`stop`."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            started = time.monotonic()
            while not self._stop.is_set():
                due = int((time.monotonic() - started) * self.rate)
                sends = []
                while self.sent < due:
                    key, value = self._record(self.sent)
                    sends.append(await producer.send(self.topic, value, key=key))
                    self.sent += 1
                await asyncio.gather(*sends)
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()

    def stop(self) -> None:
        """End :meth:`run` after its current step."""
        self._stop.set()


def run_phase(
    database: Database, label: str, env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """One phase on its own topics (made here, deleted after); the phase's figures."""
    topic = f"bench.{database.name}.{label}.telemetry.meter.v1"
    bootstrap = database.services.kafka_bootstrap
    create_topics(bootstrap, [topic], PARTITIONS)
    create_topics(bootstrap, [dlq_topic(topic)])
    try:
        return asyncio.run(_kill_and_restart(database, topic, label, env, args))
    finally:
        delete_topics(bootstrap, [topic, dlq_topic(topic)])


async def _kill_and_restart(
    database: Database, topic: str, label: str, env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """Kill and restart workers ``args.kills`` times under traffic; the phase's figures."""
    bootstrap = database.services.kafka_bootstrap
    phase = Phase(database, topic, label, env)
    traffic = Traffic(bootstrap, topic, args.rate)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    sending = asyncio.create_task(traffic.run())
    kills: list[dict[str, Any]] = []
    try:
        for n in range(WORKERS):
            phase.start(n)
        settled = await phase.until_settled(admin, time.monotonic())
        say(f"{label}: {WORKERS} workers settled, traffic {args.rate} readings/s")
        for k in range(args.kills):
            delay = 0.0 if k % 2 == 0 else args.restart_delay
            victim = k % WORKERS
            kill_at = time.monotonic()
            phase.procs[victim].send_signal(signal.SIGKILL)
            phase.procs[victim].wait(timeout=10)
            if delay:
                await _poll_for(phase, admin, delay)
            phase.start(victim)
            settled = await phase.until_settled(admin, kill_at + delay)
            # A little longer, so the stall's end is seen on every partition.
            await _poll_for(phase, admin, 1.0)
            gap, partition = phase.offsets.longest_stall(kill_at, settled + 1.0)
            kills.append(
                {
                    "restart_after_s": delay,
                    "longest_stall_s": round(gap, 2),
                    "partition": partition,
                    "settled_after_s": round(settled - kill_at, 2),
                }
            )
            say(
                f"{label}: kill {k + 1} (restart after {delay:.0f} s): partition {partition} "
                f"stood still {gap:.2f} s; group settled {settled - kill_at:.2f} s after the kill"
            )
        traffic.stop()
        await sending
        drained = await _drain(phase, admin, bootstrap, topic, traffic.sent)
    finally:
        traffic.stop()
        if not sending.done():
            sending.cancel()
        await admin.close()
        phase.stop()
    stalls = [k["longest_stall_s"] for k in kills]
    return {
        "settings": env or "defaults",
        "kills": kills,
        "max_stall_s": max(stalls, default=0.0),
        "worst_loop_stall_le_s": phase.stall_bound,
        "produced": traffic.sent,
        "drained": drained,
    }


async def _poll_for(phase: Phase, admin: AIOKafkaAdminClient, seconds: float) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        await phase.poll_offsets(admin)
        await asyncio.sleep(POLL_S)


async def _drain(
    phase: Phase, admin: AIOKafkaAdminClient, bootstrap: str, topic: str, produced: int
) -> bool:
    """True once the group committed every record produced (nothing lost in the kills)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        await phase.poll_offsets(admin)
        if sum(phase.offsets.current.values()) >= produced:
            return True
        await asyncio.sleep(POLL_S)
    say(f"committed {sum(phase.offsets.current.values())} of {produced} records")
    return False


def main(argv: list[str] | None = None) -> int:
    """Run both phases; progress on stderr, the JSON result last on stdout."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=4, help="kills per phase")
    parser.add_argument("--rate", type=int, default=500, help="readings produced per second")
    parser.add_argument("--restart-delay", type=float, default=3.0, help="every other restart")
    args = parser.parse_args(argv)
    with (
        session_services(BENCH_STACK) as services,
        fresh_database(services, "bench_recovery") as database,
    ):
        former = run_phase(database, "former", FORMER_SETTINGS, args)
        current = run_phase(database, "current", {}, args)
    result = {
        "kills_per_phase": args.kills,
        "rate": args.rate,
        "target_s": TARGET_S,
        "former": former,
        "current": current,
        "ratio": round(current["max_stall_s"] / max(former["max_stall_s"], 1e-9), 3),
    }
    print(json_line(result))
    ok = former["drained"] and current["drained"] and current["max_stall_s"] < TARGET_S
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
