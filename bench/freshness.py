"""Freshness: time from the gateway's 202 to the reading being visible in live status.

    python -m bench.freshness [--rates 333:1,10000:100] [--duration 20] [--stack-dir DIR]

Against the running stack (``make up``): for each rate, R devices (half
meters, half vehicles, fresh ids per run) each send a reading every second
through the gateway, paced evenly, for ``--duration`` seconds; ``R:B`` sends
B events per request (1: as devices do; 100: as edge gateways batching a
site's devices). The vehicles of a probe set are watched in PostgreSQL as
the read-only role (``vehicle_live_status``, what ``GET
/v1/vehicles/{id}/live`` reads) every ``--poll-ms``; a reading is visible
when live status holds its timestamp or a newer one. Freshness = first poll
that sees it - its 202, so it is over-estimated by half a poll interval on
average.

Progress goes to stderr; the last stdout line is one JSON object with
``p50_ms``/``p99_ms`` per rate. Exit code 1 if a reading never became visible
or an event was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.report import percentile
from deploy.local.devstack import DevStack, StackNotRunning
from deploy.simulator import HttpTarget, SimEvent

LIVE_SQL = "SELECT vehicle_id, recorded_at FROM vehicle_live_status WHERE vehicle_id = ANY(%s)"
#: How long to wait, after the load stopped, for the last readings to show up.
DRAIN_TIMEOUT_S = 30.0
PROBE_VEHICLES = 50


def say(message: str) -> None:
    """Progress for people, on stderr (stdout's last line is the JSON result)."""
    print(f"bench-freshness: {message}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class Probes:
    """Readings of the probe vehicles waiting to be seen, and how long each took."""

    ids: list[str]
    pending: dict[str, list[tuple[datetime, float]]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def accepted(self, event: SimEvent, at: float) -> None:
        """A probe reading got its 202 at monotonic time ``at``."""
        self.pending.setdefault(event.device_id, []).append((event.at, at))

    def seen(self, vehicle_id: str, newest: datetime, at: float) -> None:
        """Live status of ``vehicle_id`` shows ``newest``: everything up to it is visible."""
        waiting = self.pending.get(vehicle_id, [])
        still = [(ts, t) for ts, t in waiting if ts > newest]
        self.latencies.extend(at - t for ts, t in waiting if ts <= newest)
        self.pending[vehicle_id] = still

    @property
    def waiting(self) -> int:
        """Accepted probe readings not seen yet."""
        return sum(len(v) for v in self.pending.values())


def reading(device_id: str, at: datetime, number: int) -> SimEvent:
    """One plausible reading of ``device_id`` at ``at`` (millisecond timestamps: one a second)."""
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    if "-M" in device_id:
        body: dict[str, Any] = {
            "meterId": device_id,
            "kwhConsumedAc": 0.12,
            "voltage": 230.0,
            "timestamp": stamp,
        }
    else:
        body = {
            "vehicleId": device_id,
            "soc": float(20 + number % 80),
            "kwhDeliveredDc": 0.11,
            "batteryTemp": 25.0,
            "timestamp": stamp,
        }
    return SimEvent(device_id, datetime.fromisoformat(stamp), body)


async def poll(
    conn: psycopg.AsyncConnection[Any], probes: Probes, stop: asyncio.Event, every_s: float
) -> None:
    """Watch the probe vehicles' live status until ``stop`` is set and nothing is pending."""
    while not (stop.is_set() and probes.waiting == 0):
        cursor = await conn.execute(LIVE_SQL, (probes.ids,))
        now = time.monotonic()
        for vehicle_id, recorded_at in await cursor.fetchall():
            probes.seen(vehicle_id, recorded_at, now)
        await asyncio.sleep(every_s)


async def measure_rate(
    stack: DevStack, api_key: str, rate: int, batch: int, duration_s: float, poll_s: float
) -> dict[str, Any]:
    """Send ``rate`` events/s for ``duration_s`` and time the probes; returns the figures."""
    prefix = f"fresh-{secrets.token_hex(3)}-"
    devices = [f"{prefix}{'M' if i % 2 else 'V'}{i:05d}" for i in range(rate)]
    vehicles = [d for d in devices if "-V" in d]
    probes = Probes(vehicles[:PROBE_VEHICLES])
    probe_set = set(probes.ids)
    target = HttpTarget(stack.gateway_url, api_key, concurrency=32, max_retries=5)
    refused = accepted = 0
    in_flight: set[asyncio.Task[None]] = set()

    async def deliver(events: list[SimEvent]) -> None:
        nonlocal refused, accepted
        delivery = await target.deliver(events)
        done = time.monotonic()
        accepted += len(delivery.accepted)
        refused += len(delivery.rejected)
        for event in delivery.accepted:
            if event.device_id in probe_set:
                probes.accepted(event, done)

    stop = asyncio.Event()
    async with await psycopg.AsyncConnection.connect(stack.reader_url(), autocommit=True) as conn:
        poller = asyncio.create_task(poll(conn, probes, stop, poll_s))
        started = time.monotonic()
        sent = 0
        say(f"{rate:,} events/s, {batch} per request, {len(devices):,} devices, {duration_s:g} s")
        while (elapsed := time.monotonic() - started) < duration_s:
            due = min(int(rate * elapsed), int(rate * duration_s)) - sent
            now = datetime.now(UTC)
            events = [reading(devices[(sent + i) % rate], now, sent + i) for i in range(due)]
            sent += due
            for i in range(0, len(events), batch):
                task = asyncio.create_task(deliver(events[i : i + batch]))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.sleep(0.005)
        if in_flight:
            await asyncio.gather(*in_flight)
        load_s = time.monotonic() - started
        stop.set()
        try:
            await asyncio.wait_for(poller, DRAIN_TIMEOUT_S)
        except TimeoutError:
            say(f"{probes.waiting} probe readings still not visible after {DRAIN_TIMEOUT_S:g} s")
    await target.close()
    latencies = sorted(probes.latencies)
    result = {
        "target_events_per_s": rate,
        "events_per_s": round(accepted / load_s, 1),
        "events_per_request": batch,
        "accepted": accepted,
        "refused": refused,
        "samples": len(latencies),
        "never_visible": probes.waiting,
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
        "poll_ms": round(poll_s * 1000),
    }
    say(
        f"{rate:,} events/s: achieved {result['events_per_s']:,}, p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, max {result['max_ms']} ms over {len(latencies)} readings"
        + (f", {refused} refused" if refused else "")
    )
    return result


def parse_rates(raw: str) -> list[tuple[int, int]]:
    """``333:1,10000:100`` to [(333, 1), (10000, 100)]."""
    rates = []
    for item in raw.split(","):
        rate, _, batch = item.partition(":")
        rates.append((int(rate), int(batch or 1)))
    return rates


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every rate, one after the other."""
    stack = DevStack.locate(args.stack_dir)
    stack.require_up()
    api_key = stack.api_key()
    results = {}
    for rate, batch in parse_rates(args.rates):
        results[str(rate)] = await measure_rate(
            stack, api_key, rate, batch, args.duration, args.poll_ms / 1000
        )
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.freshness``."""
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__)
    parser.add_argument("--rates", default="333:1,10000:100", help="rate:events-per-request,...")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    parser.add_argument("--poll-ms", type=float, default=20.0)
    parser.add_argument("--stack-dir", help="local stack folder (default .stack/dev)")
    args = parser.parse_args(argv)
    try:
        results = asyncio.run(run(args))
    except StackNotRunning as exc:
        say(str(exc))
        return 2
    flat = {f"p99_ms_at_{rate}": r["p99_ms"] for rate, r in results.items()}
    print(json.dumps({**flat, "rates": results}), flush=True)
    bad = any(r["never_visible"] or r["refused"] for r in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
