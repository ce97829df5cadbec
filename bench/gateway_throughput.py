"""Gateway throughput: HTTP in, Kafka acknowledged, batched and one event per request.

    python -m bench.gateway_throughput [--workers 2] [--duration 15] [--profile FILE]

Setup, as in production:

- the gateway is started as ``python -m ingest_gateway`` with
  ``GATEWAY_WORKERS`` uvicorn worker processes (default: one per core), each
  with its own idempotent acks=all Kafka producer, on a free loopback port;
- Kafka is the one given by ``--kafka`` / ``KAFKA_BOOTSTRAP_SERVERS``, else
  the running local stack's (``make up``), else a private stack in
  ``.stack/bench`` started for the run; the gateway publishes to topics of
  its own (12 partitions, deleted afterwards), so the stack's consumers do
  not compete for the CPU;
- the load generator is wrk (``bench.wrk``, one thread): closed-loop
  keep-alive HTTP/1.1 connections sending prepared request bodies in turn,
  whose own CPU use is reported. wrk must be installed (``make
  bench-gateway`` installs Debian's package when it can).

Two phases, each a ``--warmup`` run then a measured ``--duration`` run (whole
seconds): batches of 500 simulated events per request (JSON array,
``--batch-connections`` 4), then one event per request
(``--single-connections`` 64: many devices at once). Afterwards the gateway's
``/metrics`` (aggregated over all workers through prometheus_client's
multiprocess mode) must count the events wrk saw accepted, plus at most the
requests still in flight when each wrk run stopped (one per connection).

CPU is sampled from ``/proc`` over each measured interval: the gateway's
processes, the load generator, the Kafka broker (when local) and anything
else on the machine, in percent of one core (200 % is all of a 2-core box).
``*_gateway_cpu_us_per_event`` / ``_per_request`` (gateway CPU per unit of
work) stay comparable when other work shares the machine; the rates do not.

``--profile FILE`` instead runs one worker under cProfile through both
phases and prints where its time went (profiling slows it; the figures of
that run are not the benchmark's).

The last stdout line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import secrets
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from bench.gateway_process import GatewayProcess, kafka_topics
from bench.procstat import CpuMeter, PeakRss
from bench.wrk import WrkLoad, WrkMissing, find_wrk
from deploy.local.devstack import DevStack
from deploy.local.services import BENCH_STACK, session_services
from deploy.simulator import Fleet, FleetConfig, accelerated_window
from deploy.simulator.fleet import SimEvent

BATCH_EVENTS = 500
#: The figures of a phase that was not run (``--phase``).
SKIPPED: dict[str, Any] = {
    "events_per_s": None,
    "requests_per_s": None,
    "p50_ms": None,
    "p99_ms": None,
    "cpu_percent": 0.0,
    "gateway_cpu_percent": None,
    "machine_cpu_percent": None,
    "events_accepted_total": 0,
    "events_in_flight_max": 0,
    "non_2xx": 0,
    "socket_errors": 0,
}


def say(message: str) -> None:
    """Progress for people, on stderr (stdout's last line is the JSON result)."""
    print(f"bench-gateway: {message}", file=sys.stderr, flush=True)


def simulated_events(count: int) -> list[SimEvent]:
    """``count`` realistic events of the last hour: every pair of a 2,000-vehicle fleet."""
    fleet = Fleet(FleetConfig(size=2000, seed=7, prefix="gwbench-"))
    start, minutes = accelerated_window(1.0)
    events: list[SimEvent] = []
    for minute in fleet.minutes(start, minutes):
        events.extend(minute)
        if len(events) >= count:
            break
    return events[:count]


def prepared_bodies(batched: bool) -> tuple[str, list[bytes]]:
    """The route and the request bodies of a phase: 16 batches of 500 events, or 4,000 events."""
    events = simulated_events(16 * BATCH_EVENTS if batched else 4000)
    if batched:
        bodies = [
            orjson.dumps([e.body for e in events[i : i + BATCH_EVENTS]])
            for i in range(0, len(events), BATCH_EVENTS)
        ]
        return "/v1/ingest/batch", bodies
    return "/v1/ingest", [orjson.dumps(event.body) for event in events]


def run_phase(
    name: str,
    gateway: GatewayProcess,
    connections: int,
    warmup_s: float,
    duration_s: float,
) -> dict[str, Any]:
    """One load phase against ``gateway``: wrk's figures plus CPU shares."""
    path, bodies = prepared_bodies(name == "batched")
    per_request = BATCH_EVENTS if name == "batched" else 1
    load = WrkLoad(
        gateway.url,
        path,
        {"Authorization": f"Bearer {gateway.api_key}", "Content-Type": "application/json"},
        bodies,
        connections,
    )
    say(f"{name}: {connections} connections, {warmup_s:g} s warm-up + {duration_s:g} s measured")
    warm = load.run(warmup_s)
    # CPU is sampled over the measured run only; wrk's own comes from its rusage.
    roots = {"gateway": gateway.pid}
    if gateway.kafka_pid is not None:
        roots["kafka"] = gateway.kafka_pid
    meter = CpuMeter(roots)
    meter.start()
    run = load.run(duration_s)
    usage = meter.stop()
    cpu = {name: usage.percent(name) for name in roots}
    # Every 2xx of these routes is a 202.
    result: dict[str, Any] = {
        "requests_per_s": round(run.requests / run.seconds, 1),
        "events_per_s": round(run.answered_2xx * per_request / run.seconds, 1),
        "p50_ms": round(run.p50_ms, 2),
        "p90_ms": round(run.p90_ms, 2),
        "p99_ms": round(run.p99_ms, 2),
        "max_ms": round(run.max_ms, 2),
        "non_2xx": run.non_2xx + warm.non_2xx,
        "socket_errors": run.socket_errors + warm.socket_errors,
        "events_accepted_total": (warm.answered_2xx + run.answered_2xx) * per_request,
        "events_in_flight_max": (warm.max_in_flight + run.max_in_flight) * per_request,
        "cpu_percent": round(100 * run.cpu_s / run.seconds, 1),
        "gateway_cpu_percent": cpu["gateway"],
        "kafka_cpu_percent": cpu.get("kafka"),
        "machine_cpu_percent": usage.machine_percent,
    }
    # CPU per unit of work: steadier than the rates on a box shared with other work.
    unit = result["events_per_s"] if name == "batched" else result["requests_per_s"]
    result["gateway_cpu_us_per_unit"] = round(cpu["gateway"] * 1e4 / unit, 1) if unit else None
    # Whatever else ran meanwhile (other people's work on a shared box shows here).
    ours = cpu["gateway"] + result["cpu_percent"] + (cpu.get("kafka") or 0.0)
    result["other_cpu_percent"] = round(max(usage.machine_percent - ours, 0.0), 1)
    say(
        f"{name}: {result['requests_per_s']:,.0f} requests/s, {result['events_per_s']:,.0f} "
        f"events/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, non-2xx "
        f"{result['non_2xx']}, socket errors {result['socket_errors']}; CPU: gateway "
        f"{cpu['gateway']}%, wrk {result['cpu_percent']}%, Kafka {cpu.get('kafka', '?')}%, "
        f"anything else {result['other_cpu_percent']}% (machine {usage.machine_percent}% of "
        f"{100 * (os.cpu_count() or 1)}%)"
    )
    return result


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def kafka_for_run(explicit: str | None) -> Iterator[str]:
    """Bootstrap servers: given, or the running local stack's, or a private stack's."""
    given = explicit or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    stack = DevStack.locate()
    host, port = stack.kafka_bootstrap.split(":")
    if _reachable(host, int(port)):
        yield stack.kafka_bootstrap
        return
    say(f"no running Kafka: starting a private stack in {BENCH_STACK.layout.root}")
    with session_services(BENCH_STACK) as services:
        yield services.kafka_bootstrap


def print_profile(path: Path, limit: int = 25) -> None:
    """The top of a cProfile dump, by own time and by cumulative time, on stderr."""
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_throughput", description=__doc__)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per phase, not counted")
    parser.add_argument("--batch-connections", type=int, default=4)
    parser.add_argument("--single-connections", type=int, default=64)
    parser.add_argument("--kafka", help="bootstrap servers (default: see above)")
    parser.add_argument("--profile", type=Path, help="cProfile one worker into this file")
    parser.add_argument(
        "--phase", choices=["batched", "single"], action="append", help="run only these"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run both phases; the last stdout line is the JSON result."""
    args = parse_args(argv)
    try:
        find_wrk()
    except WrkMissing as exc:
        say(str(exc))
        return 2
    workers = 1 if args.profile else args.workers
    run_id = secrets.token_hex(3)
    with kafka_for_run(args.kafka) as bootstrap, kafka_topics(bootstrap, f"bench-gw-{run_id}") as t:
        say(f"kafka {bootstrap}, topics {t.meter} / {t.vehicle}, {workers} gateway worker(s)")
        with (
            GatewayProcess(bootstrap, t, workers, profile=args.profile) as gateway,
            PeakRss(gateway.worker_pids()) as rss,
        ):
            phases = args.phase or ["batched", "single"]
            batched = single = SKIPPED
            if "batched" in phases:
                batched = run_phase(
                    "batched", gateway, args.batch_connections, args.warmup, args.duration
                )
            if "single" in phases:
                single = run_phase(
                    "single", gateway, args.single_connections, args.warmup, args.duration
                )
            counted = gateway.accepted_events()

    sent = batched["events_accepted_total"] + single["events_accepted_total"]
    unseen = batched["events_in_flight_max"] + single["events_in_flight_max"]
    say(
        f"gateway /metrics counts {counted:,.0f} accepted events; wrk saw {sent:,} "
        f"(and up to {unseen:,} more in flight when it stopped)"
    )
    peaks = rss.mib().values()
    say(f"peak RSS per worker: {', '.join(f'{mb:.0f} MB' for mb in peaks)}")
    if args.profile:
        print_profile(args.profile)
    result = {
        "workers": workers,
        "batched_events_per_s": batched["events_per_s"],
        "batched_requests_per_s": batched["requests_per_s"],
        "batched_p50_ms": batched["p50_ms"],
        "batched_p99_ms": batched["p99_ms"],
        "single_requests_per_s": single["requests_per_s"],
        "single_p50_ms": single["p50_ms"],
        "single_p99_ms": single["p99_ms"],
        "loadgen_cpu_percent": max(batched["cpu_percent"], single["cpu_percent"]),
        "batched_loadgen_cpu_percent": batched["cpu_percent"],
        "single_loadgen_cpu_percent": single["cpu_percent"],
        "batched_gateway_cpu_percent": batched["gateway_cpu_percent"],
        "single_gateway_cpu_percent": single["gateway_cpu_percent"],
        "batched_gateway_cpu_us_per_event": batched.get("gateway_cpu_us_per_unit"),
        "single_gateway_cpu_us_per_request": single.get("gateway_cpu_us_per_unit"),
        "batched_kafka_cpu_percent": batched.get("kafka_cpu_percent"),
        "single_kafka_cpu_percent": single.get("kafka_cpu_percent"),
        "batched_other_cpu_percent": batched.get("other_cpu_percent"),
        "single_other_cpu_percent": single.get("other_cpu_percent"),
        "batched_machine_cpu_percent": batched["machine_cpu_percent"],
        "single_machine_cpu_percent": single["machine_cpu_percent"],
        "gateway_worker_peak_rss_mb": round(max(peaks, default=0.0), 1),
        "non_2xx": {"batched": batched["non_2xx"], "single": single["non_2xx"]},
        "socket_errors": {"batched": batched["socket_errors"], "single": single["socket_errors"]},
        "events_unseen_by_wrk": int(counted - sent),
        "metrics_consistent": 0 <= counted - sent <= unseen,
        "profiled": bool(args.profile),
    }
    print(json.dumps(result), flush=True)
    return 0 if result["metrics_consistent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
