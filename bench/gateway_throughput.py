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
- the load generator is a separate process (``bench.loadgen``): closed-loop
  keep-alive HTTP/1.1 connections sending prepared requests, whose own CPU
  use is reported.

Two phases, each ``--warmup`` + ``--duration`` seconds: batches of 500
simulated events per request (JSON array, ``--batch-connections`` 4), then
one event per request (``--single-connections`` 64: many devices at once).
Afterwards the gateway's ``/metrics`` (aggregated over all workers through
prometheus_client's multiprocess mode) must count exactly the events the
load generator saw accepted.

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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from bench.gateway_process import GatewayProcess, kafka_topics
from bench.procstat import CpuMeter, PeakRss
from deploy.local.devstack import DevStack
from deploy.local.services import BENCH_STACK, session_services
from deploy.simulator import Fleet, FleetConfig, accelerated_window
from deploy.simulator.fleet import SimEvent
from deploy.simulator.http1 import Endpoint, build_request

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
    "statuses": {},
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


def prepared_requests(url: str, api_key: str, batched: bool) -> list[tuple[str, int]]:
    """Request bytes (latin-1 text, for JSON) and their event counts, for the load generator."""
    endpoint = Endpoint.parse(url)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    events = simulated_events(16 * BATCH_EVENTS if batched else 4000)
    requests = []
    if batched:
        for i in range(0, len(events), BATCH_EVENTS):
            body = orjson.dumps([e.body for e in events[i : i + BATCH_EVENTS]])
            raw = build_request(endpoint, "POST", "/v1/ingest/batch", body, headers)
            requests.append((raw.decode("latin-1"), BATCH_EVENTS))
    else:
        for event in events:
            raw = build_request(endpoint, "POST", "/v1/ingest", orjson.dumps(event.body), headers)
            requests.append((raw.decode("latin-1"), 1))
    return requests


def run_phase(
    name: str,
    gateway: GatewayProcess,
    connections: int,
    warmup_s: float,
    duration_s: float,
) -> dict[str, Any]:
    """One load phase against ``gateway``; the load generator's figures plus CPU shares."""
    spec = {
        "url": gateway.url,
        "connections": connections,
        "warmup_s": warmup_s,
        "duration_s": duration_s,
        "requests": prepared_requests(gateway.url, gateway.api_key, name == "batched"),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec_file:
        json.dump(spec, spec_file)
    say(f"{name}: {connections} connections, {warmup_s:g} s warm-up + {duration_s:g} s measured")
    loadgen = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", spec_file.name], stdout=subprocess.PIPE, text=True
    )
    # CPU is sampled over the measured interval only.
    time.sleep(warmup_s)
    # The load generator measures its own CPU (it has exited when we sample again).
    roots = {"gateway": gateway.pid}
    if gateway.kafka_pid is not None:
        roots["kafka"] = gateway.kafka_pid
    meter = CpuMeter(roots)
    meter.start()
    out, _ = loadgen.communicate(timeout=warmup_s + duration_s + 120)
    usage = meter.stop()
    cpu = {name: usage.percent(name) for name in roots} | {"machine": usage.machine_percent}
    Path(spec_file.name).unlink()
    if loadgen.returncode != 0:
        raise RuntimeError(f"load generator failed (exit {loadgen.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["gateway_cpu_percent"] = cpu["gateway"]
    result["kafka_cpu_percent"] = cpu.get("kafka")
    result["machine_cpu_percent"] = cpu["machine"]
    # CPU per unit of work: steadier than the rates on a box shared with other work.
    unit = result["events_per_s"] if name == "batched" else result["requests_per_s"]
    result["gateway_cpu_us_per_unit"] = round(cpu["gateway"] * 1e4 / unit, 1) if unit else None
    # Whatever else ran meanwhile (other people's work on a shared box shows here).
    ours = cpu["gateway"] + result["cpu_percent"] + (cpu.get("kafka") or 0.0)
    result["other_cpu_percent"] = round(max(cpu["machine"] - ours, 0.0), 1)
    say(
        f"{name}: {result['requests_per_s']:,.0f} requests/s, {result['events_per_s']:,.0f} "
        f"events/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, statuses "
        f"{result['statuses']}, errors {result['errors']}; CPU: gateway "
        f"{cpu['gateway']}%, load generator {result['cpu_percent']}%, Kafka "
        f"{cpu.get('kafka', '?')}%, anything else {result['other_cpu_percent']}% (machine "
        f"{cpu['machine']}% of {100 * (os.cpu_count() or 1)}%)"
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
    say(f"gateway /metrics counts {counted:,.0f} accepted events; load generators saw {sent:,}")
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
        "non_202": {
            "batched": {k: v for k, v in batched["statuses"].items() if k != "202"},
            "single": {k: v for k, v in single["statuses"].items() if k != "202"},
        },
        "metrics_consistent": counted == sent,
        "profiled": bool(args.profile),
    }
    print(json.dumps(result), flush=True)
    return 0 if result["metrics_consistent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
