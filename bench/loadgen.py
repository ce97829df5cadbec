"""A closed-loop HTTP load generator, run as its own process: ``python -m bench.loadgen SPEC``.

SPEC is a JSON file: ``{"url", "connections", "warmup_s", "duration_s",
"requests": [[request_bytes_as_latin1, events_in_it], ...]}``. Each of
``connections`` keep-alive connections sends the next request (cycling
through ``requests``) as soon as the previous answer arrived. Only answers
that arrive after the warm-up count. The last stdout line is one JSON
object: requests, events accepted, statuses, latency percentiles, and the
generator's own CPU use (so a reader can tell whether it starved the server).

It runs on uvloop when available: per request it only writes prepared bytes
and frames one ``Content-Length`` response, about 30 us of CPU.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import percentile
from deploy.simulator.http1 import Endpoint, Http1Connection


@dataclass(slots=True)
class Tally:
    """What the measured interval saw."""

    latencies: array[float] = field(default_factory=lambda: array("d"))
    statuses: Counter[int] = field(default_factory=Counter)
    events_accepted: int = 0
    #: Including the warm-up: what the server's own counters must show.
    events_accepted_total: int = 0
    errors: Counter[str] = field(default_factory=Counter)


async def _connection_loop(
    endpoint: Endpoint,
    requests: list[tuple[bytes, int]],
    offset: int,
    measure_from: float,
    until: float,
    tally: Tally,
) -> None:
    conn = Http1Connection(endpoint, timeout_s=30.0)
    index = offset
    clock = time.perf_counter
    while (started := clock()) < until:
        raw, events = requests[index % len(requests)]
        index += 1
        try:
            response = await conn.send(raw)
        except (OSError, TimeoutError) as exc:
            tally.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.05)
            continue
        if response.status == 202:
            tally.events_accepted_total += events
        if started >= measure_from:
            tally.latencies.append(clock() - started)
            tally.statuses[response.status] += 1
            if response.status == 202:
                tally.events_accepted += events
    conn.close()


async def generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the load ``spec`` describes and return the figures."""
    endpoint = Endpoint.parse(spec["url"])
    requests = [(raw.encode("latin-1"), int(events)) for raw, events in spec["requests"]]
    tally = Tally()
    begin = time.perf_counter()
    measure_from = begin + float(spec["warmup_s"])
    until = measure_from + float(spec["duration_s"])
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    connections = int(spec["connections"])
    await asyncio.gather(
        *(
            _connection_loop(endpoint, requests, i * 7, measure_from, until, tally)
            for i in range(connections)
        )
    )
    wall = time.perf_counter() - begin
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    measured = max(time.perf_counter() - measure_from, 1e-9)
    latencies = sorted(tally.latencies)
    count = len(latencies)
    return {
        "connections": connections,
        "seconds": round(measured, 3),
        "requests": count,
        "requests_per_s": round(count / measured, 1),
        "events_accepted": tally.events_accepted,
        "events_per_s": round(tally.events_accepted / measured, 1),
        "events_accepted_total": tally.events_accepted_total,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors": dict(tally.errors),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p90_ms": round(percentile(latencies, 90) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "cpu_percent": round(100 * cpu_s / wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: one argument, the spec file; prints the result as one JSON line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.loadgen SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    try:
        import uvloop
    except ImportError:  # plain asyncio still works, at a higher CPU cost per request
        result = asyncio.run(generate(spec))
    else:
        result = uvloop.run(generate(spec))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
