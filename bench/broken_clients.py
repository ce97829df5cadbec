"""Broken clients against one gateway worker, while normal ingest goes on: what they cost it.

    python -m bench.broken_clients [--duration 15] [--idle 600] [--hostile 8] [--kafka HOST:PORT]

The gateway runs as operators run it (``python -m ingest_gateway``, one
worker, default settings but for its topics and key), against the Kafka given
by ``--kafka`` / ``KAFKA_BOOTSTRAP_SERVERS``, the running local stack's, or a
private stack started for the run (as ``bench.gateway_throughput`` finds it).
All traffic stays on 127.0.0.1. Three phases, one after another:

1. ``baseline``: normal ingest alone for ``--duration`` seconds: ``--clients``
   keep-alive connections sending one valid event per request to
   ``/v1/ingest`` (``--rate`` requests/s in all, paced, not as fast as
   possible: a fleet's steady traffic), and one sending a batch of 100 events
   every ``--batch-every`` seconds. Latency is taken per request, from its
   send to its answer.
2. ``attacked``: the same normal ingest while an attacker
   (:mod:`bench.attacker`, a process of its own, so that its work shares the
   machine's CPU but never delays the normal clients' event loop) holds
   ``--idle`` connections that send nothing, ``--half-headers`` that send
   half a request head and ``--dribblers`` that send a head and then one body
   byte a second, each reopened when the server closes it, and keeps
   ``--hostile`` bodies in flight at once, in a loop: 5 MB batches of events
   each carrying thousands of unknown keys (each event under the 64 KB event
   limit, so each is parsed and validated: the costliest valid-looking
   input), a 4.2 MB single event of 380,000 unknown keys, 5 MB of
   ``[{},{},...]`` and 5 MB batches of deeply nested arrays. Their statuses
   and the sizes of their answers are kept.
3. ``no-deadlines``: the gateway restarted with its three read deadlines at
   3600 s (as before the deadlines: uvicorn alone has none for a connection
   that has not sent a whole request), the same attack for
   ``--hold`` seconds without normal ingest: how many held connections are
   still open at its end.

A sampler reads the worker's RSS (psutil) through each phase; the CPU of
the gateway, Kafka (when local) and the attacker is measured over each
ingest. The gateway's ``/metrics`` are read before and after the attacked
phase: ``energy_gateway_read_timeouts_total{phase}`` (connections it closed,
by deadline), requests shed by its in-flight bounds and failed publishes.
Before the phases, the batch route's own scan and validation of each hostile
batch body is timed in this process (CPU milliseconds): how long one such
request holds the worker's event loop.

The last stdout line is one JSON object. Exits 1 if a normal request got an
answer other than 202, the worker's peak RSS passed ``--limit-mb`` (200), an
answer to a hostile body was larger than 64 KB or had a status not expected
for it, or, with the deadlines on, a held connection was still open at the end
of the phase although older than its deadline and ``--grace`` seconds (5: the
worker's timers fire late by as long as hostile bodies hold its event loop,
seconds; how late each kind was closed is reported).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.attacker import HELD_KINDS, AttackerProcess, Plan, hostile_bodies
from bench.gateway_process import GatewayProcess, kafka_topics
from bench.gateway_throughput import kafka_for_run, simulated_events
from bench.procstat import CpuMeter, PeakRss
from bench.report import json_line, percentile, say
from deploy.local.prometheus_text import metric_value, scrape
from deploy.simulator.http1 import Endpoint, Http1Connection, Http1Error, build_request
from ingest_gateway.body import batch_events, batch_messages
from ingest_gateway.errors import GatewayError
from ingest_gateway.settings import GatewaySettings

PREFIX = "bench-broken-clients"
BATCH_SIZE = 100
NO_DEADLINES = {
    "GATEWAY_IDLE_TIMEOUT_S": "3600",
    "GATEWAY_HEADER_TIMEOUT_S": "3600",
    "GATEWAY_BODY_TIMEOUT_S": "3600",
}
ANSWER_LIMIT_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 120.0
#: The attacker gives up on its own this long after its phase should have ended.
ATTACKER_SPARE_S = 120.0


def report(message: str) -> None:
    """One progress line on stderr."""
    say(f"{PREFIX}: {message}")


# --- Normal ingest ------------------------------------------------------------------------------


@dataclass(slots=True)
class Latencies:
    """The answers of one kind of normal request: seconds per request and statuses."""

    seconds: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def figures(self, wall_s: float) -> dict[str, Any]:
        """Count, rate, p50/p99/max in milliseconds and statuses (0: no answer)."""
        ms = [s * 1000 for s in self.seconds]
        return {
            "requests": len(ms),
            "per_s": round(len(ms) / wall_s, 1),
            "p50_ms": round(percentile(ms, 50), 2),
            "p99_ms": round(percentile(ms, 99), 2),
            "max_ms": round(max(ms, default=0.0), 2),
            "statuses": dict(sorted(self.statuses.items())),
        }


async def paced_client(
    endpoint: Endpoint, requests: list[bytes], interval_s: float, until: float, into: Latencies
) -> None:
    """Send ``requests`` in turn, one every ``interval_s`` (never two at once), until ``until``.

    A request that is late (the previous answer took longer than the
    interval) is sent at once, without catching up on the ones missed.
    """
    connection = Http1Connection(endpoint, timeout_s=REQUEST_TIMEOUT_S)
    due = time.monotonic()
    try:
        for number in range(10**9):
            due = max(due + interval_s, time.monotonic())
            if due >= until:
                return
            await asyncio.sleep(due - time.monotonic())
            started = time.perf_counter()
            try:
                status = (await connection.send(requests[number % len(requests)])).status
            except (Http1Error, OSError, TimeoutError):
                status = 0
            into.seconds.append(time.perf_counter() - started)
            into.statuses[status] += 1
    finally:
        connection.close()


def normal_requests(endpoint: Endpoint, api_key: str) -> tuple[list[bytes], list[bytes]]:
    """Prepared single-event and 100-event batch requests of a simulated fleet's last hour."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    events = [event.body for event in simulated_events(4000)]
    singles = [
        build_request(endpoint, "POST", "/v1/ingest", orjson.dumps(e), headers) for e in events
    ]
    batches = [
        build_request(
            endpoint, "POST", "/v1/ingest/batch", orjson.dumps(events[i : i + BATCH_SIZE]), headers
        )
        for i in range(0, len(events), BATCH_SIZE)
    ]
    return singles, batches


async def normal_ingest(
    port: int, api_key: str, args: argparse.Namespace
) -> tuple[Latencies, Latencies, float]:
    """``args.duration`` seconds of paced normal ingest: single and batch latencies, wall time."""
    endpoint = Endpoint("127.0.0.1", port)
    singles, batches = normal_requests(endpoint, api_key)
    single, batch = Latencies(), Latencies()
    started = time.monotonic()
    until = started + args.duration
    interval = args.clients / args.rate
    clients = [
        paced_client(endpoint, singles[i :: args.clients], interval, until, single)
        for i in range(args.clients)
    ]
    clients.append(paced_client(endpoint, batches, args.batch_every, until, batch))
    await asyncio.gather(*clients)
    return single, batch, time.monotonic() - started


# --- The run ------------------------------------------------------------------------------------


def batch_route_cost(settings: GatewaySettings) -> dict[str, float]:
    """Milliseconds of one worker's CPU that the batch route spends on each hostile batch body.

    The route's own scan and validation, run here in this process: what one
    such request holds the worker's event loop for (the route does not yield
    while it validates).
    """
    topics, limits = settings.topics(), settings.limits()
    cost = {}
    for hostile in hostile_bodies():
        if hostile.path != "/v1/ingest/batch":
            continue
        started = time.process_time()
        try:
            events = batch_events(
                hostile.body,
                "application/json",
                settings.max_batch_events,
                settings.max_event_bytes,
            )
            batch_messages(events, topics, limits)
        except GatewayError:
            pass  # refused: the point of these bodies
        cost[hostile.name] = round((time.process_time() - started) * 1000, 1)
    report(f"the batch route's CPU per hostile body (ms, in this process): {cost}")
    return cost


def gateway_counts(url: str) -> dict[str, float]:
    """The gateway's read timeouts per phase, requests shed, and publishes that failed."""
    text = scrape(url + "/metrics")
    counts = {
        f"read_timeouts_{kind}": metric_value(
            text, "energy_gateway_read_timeouts_total", phase=kind
        )
        for kind in HELD_KINDS
    }
    counts["requests_shed"] = metric_value(text, "energy_gateway_requests_shed_total")
    counts["publish_failures"] = metric_value(text, "energy_gateway_publish_failures_total")
    return counts


def plan_for(
    gateway: GatewayProcess, args: argparse.Namespace, deadlines: dict[str, float]
) -> Plan:
    """The attack on ``gateway``, lasting at most its phase and some spare time."""
    return Plan(
        port=gateway.port,
        api_key=gateway.api_key,
        held={"idle": args.idle, "headers": args.half_headers, "body": args.dribblers},
        hostile=args.hostile,
        deadlines_s=deadlines,
        grace_s=args.grace,
        lifetime_s=max(args.duration, args.hold) + ATTACKER_SPARE_S,
    )


def ingest_phase(
    name: str, gateway: GatewayProcess, args: argparse.Namespace, attacker: int | None = None
) -> dict[str, Any]:
    """One phase of normal ingest: its figures and the CPU of the gateway, Kafka and ``attacker``.

    CPU is in percent of one core (200 is the whole of a 2-core machine).
    """
    roots = {"gateway": gateway.pid}
    if gateway.kafka_pid is not None:
        roots["kafka"] = gateway.kafka_pid
    if attacker is not None:
        roots["attacker"] = attacker
    meter = CpuMeter(roots)
    meter.start()
    single, batch, wall = asyncio.run(normal_ingest(gateway.port, gateway.api_key, args))
    usage = meter.stop()
    result: dict[str, Any] = {
        "single": single.figures(wall),
        "batch": batch.figures(wall),
        "non_202": sum(n for lat in (single, batch) for s, n in lat.statuses.items() if s != 202),
        "cpu_percent": {root: usage.percent(root) for root in roots}
        | {"machine": usage.machine_percent},
    }
    report(
        f"{name}: single p50 {result['single']['p50_ms']} ms, p99 {result['single']['p99_ms']} ms, "
        f"max {result['single']['max_ms']} ms ({result['single']['per_s']}/s); batch p99 "
        f"{result['batch']['p99_ms']} ms, max {result['batch']['max_ms']} ms; non-202 "
        f"{result['non_202']}; CPU % of a core {result['cpu_percent']}"
    )
    return result


def held_line(held: dict[str, Any]) -> str:
    """Held connections in one line."""
    return "; ".join(
        f"{kind}: {h['opened']} opened, {h['closed_by_server']} closed by the server "
        f"(age {h['close_age_s']['min']}..{h['close_age_s']['max']} s, {h['answered_408']} "
        f"with 408), {h['open_at_end']} open at the end, {h['open_whole_phase']} of them all along "
        f"and {h['open_past_deadline']} past the deadline + grace"
        for kind, h in held.items()
    )


def failures(baseline: dict[str, Any], attacked: dict[str, Any], limit_mb: float) -> list[str]:
    """What failed the run's expectations (nothing: it passed)."""
    found = []
    for name, phase in [("baseline", baseline), ("attacked", attacked)]:
        if phase["non_202"]:
            found.append(f"{name}: {phase['non_202']} normal requests not answered 202")
        if phase["peak_rss_mb"] > limit_mb:
            found.append(f"{name}: worker peak RSS {phase['peak_rss_mb']} MB over {limit_mb:g}")
    for body, h in attacked["hostile"].items():
        if h["largest_answer_bytes"] > ANSWER_LIMIT_BYTES:
            found.append(f"{body}: an answer of {h['largest_answer_bytes']:,} bytes")
        if h["unexpected"]:
            found.append(f"{body}: {h['unexpected']} answers of an unexpected status")
    for kind, h in attacked["held"].items():
        if h["open_past_deadline"]:
            found.append(f"held {kind}: {h['open_past_deadline']} still open past the deadline")
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench.broken_clients", description=__doc__)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of normal ingest")
    parser.add_argument("--clients", type=int, default=4, help="single-event connections")
    parser.add_argument("--rate", type=float, default=200.0, help="single-event requests/s")
    parser.add_argument("--batch-every", type=float, default=0.5, help="seconds between batches")
    parser.add_argument("--idle", type=int, default=600)
    parser.add_argument("--half-headers", type=int, default=50)
    parser.add_argument("--dribblers", type=int, default=50)
    parser.add_argument("--hostile", type=int, default=8, help="hostile bodies in flight")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds of the no-deadlines run")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds past a deadline")
    parser.add_argument("--limit-mb", type=float, default=200.0)
    parser.add_argument("--kafka", help="bootstrap servers (default: see above)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the three phases; the last stdout line is the JSON result."""
    args = parse_args(argv)
    settings = GatewaySettings(api_keys="bench")
    deadlines = {
        "idle": float(settings.idle_timeout_s),
        "headers": settings.header_timeout_s,
        "body": settings.body_timeout_s,
    }
    without = dict.fromkeys(HELD_KINDS, 3600.0)
    route_ms = batch_route_cost(settings)
    held_total = args.idle + args.half_headers + args.dribblers
    with (
        kafka_for_run(args.kafka) as bootstrap,
        kafka_topics(bootstrap, f"bench-broken-{secrets.token_hex(3)}") as topics,
    ):
        with GatewayProcess(bootstrap, topics, workers=1) as gateway:
            (worker,) = gateway.worker_pids()
            report(f"gateway worker {worker}, read deadlines {deadlines} s")
            with PeakRss([worker], every_s=0.05) as rss:
                baseline = ingest_phase("baseline", gateway, args)
            baseline["peak_rss_mb"] = round(rss.mib()[worker], 1)
            before = gateway_counts(gateway.url)
            report(f"attacked: {held_total} held connections, {args.hostile} hostile bodies")
            with (
                PeakRss([worker], every_s=0.05) as rss,
                AttackerProcess(plan_for(gateway, args, deadlines)) as attacker,
            ):
                attacked = ingest_phase("attacked", gateway, args, attacker.pid)
                attacked |= attacker.finish()
            attacked["peak_rss_mb"] = round(rss.mib()[worker], 1)
            after = gateway_counts(gateway.url)
            attacked["gateway_counted"] = {k: int(after[k] - before[k]) for k in after}
        report(f"attacked: {held_line(attacked['held'])}")
        report(f"attacked: the gateway's /metrics counted {attacked['gateway_counted']}")
        for body, h in attacked["hostile"].items():
            report(
                f"attacked: {body} ({h['bytes']:,} bytes): statuses {h['statuses']}, largest "
                f"answer {h['largest_answer_bytes']:,} bytes, slowest {h['slowest_s']} s"
            )
        with GatewayProcess(bootstrap, topics, workers=1, extra_env=NO_DEADLINES) as gateway:
            (worker,) = gateway.worker_pids()
            report(f"no-deadlines: the same attack for {args.hold:g} s, deadlines at 3600 s")
            with (
                PeakRss([worker], every_s=0.05) as rss,
                AttackerProcess(plan_for(gateway, args, without)) as attacker,
            ):
                time.sleep(args.hold)
                open_without = attacker.finish()
            open_without["peak_rss_mb"] = round(rss.mib()[worker], 1)
        report(f"no-deadlines: {held_line(open_without['held'])}")

    ratio = {
        kind: round(attacked[kind]["p99_ms"] / baseline[kind]["p99_ms"], 2)
        for kind in ("single", "batch")
    }
    largest = max(h["largest_answer_bytes"] for h in attacked["hostile"].values())
    failed = failures(baseline, attacked, args.limit_mb)
    report(
        f"p99 attacked / baseline: single {ratio['single']}, batch {ratio['batch']}; worker peak "
        f"RSS {attacked['peak_rss_mb']} MB (limit {args.limit_mb:g}); largest answer to a hostile "
        f"body {largest:,} bytes; {'; '.join(failed) or 'every expectation met'}"
    )
    result = {
        "duration_s": args.duration,
        "held": {"idle": args.idle, "headers": args.half_headers, "body": args.dribblers},
        "hostile_in_flight": args.hostile,
        "deadlines_s": deadlines,
        "baseline": baseline,
        "attacked": attacked,
        "p99_attacked_to_baseline": ratio,
        "largest_hostile_answer_bytes": largest,
        "batch_route_cpu_ms": route_ms,
        "no_deadlines": {
            "hold_s": args.hold,
            "still_open": {k: h["open_whole_phase"] for k, h in open_without["held"].items()},
            "closed_by_server": {k: h["closed_by_server"] for k, h in open_without["held"].items()},
            "peak_rss_mb": open_without["peak_rss_mb"],
        },
        "limit_mb": args.limit_mb,
        "failures": failed,
    }
    print(json_line(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
