"""Gateway memory under worst-case bodies: peak RSS of one worker against its 200 MB target.

    python -m bench.gateway_memory [--concurrency 16] [--rounds 3] [--kafka HOST:PORT]

The gateway runs as operators run it (``python -m ingest_gateway``, one
worker, default settings but for its topics and key), against the Kafka given
by ``--kafka`` / ``KAFKA_BOOTSTRAP_SERVERS``, the running local stack's, or a
private stack started for the run (as ``bench.gateway_throughput`` finds it).
All traffic stays on 127.0.0.1.

For each kind of body, ``--rounds`` rounds of ``--concurrency`` requests are
sent at once, each on its own connection:

- ``empty-objects``: 5 MB of ``[{},{},...]`` to ``/v1/ingest/batch``;
- ``ndjson-one-line``: one NDJSON line holding a 5 MB object;
- ``single-5mb``: a 5 MB object to ``/v1/ingest``;
- ``max-batch``: a valid batch of ``max_batch_events`` (10,000) realistic events.

A sampler reads the worker's RSS (psutil) every ``--sample-ms`` and keeps the
peak per kind; the idle RSS is read before the first request. Statuses are
reported per kind (413 for the worst bodies, 202 or 503 with ``Retry-After``
for the valid batches past the in-flight bounds).

In the same run, in this process, the raw-byte scan that locates a batch's
events (``ingest_gateway.scan``) is timed against parsing the same body with
orjson, on a realistic 10,000-event batch (JSON array and NDJSON): the scan's
cost as a ratio of the parse.

The last stdout line is one JSON object. Exits 1 if a peak passes ``--limit-mb``
(200), or if any request got an answer other than the expected ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import psutil

from bench.gateway_process import GatewayProcess, kafka_topics
from bench.gateway_throughput import kafka_for_run, simulated_events
from bench.procstat import MIB, PeakRss
from bench.report import json_line, say
from ingest_gateway.body import batch_messages
from ingest_gateway.scan import array_events, ndjson_events
from ingest_gateway.settings import GatewaySettings

BODY_BYTES = 5 * 1024 * 1024 - 1024
MAX_EVENTS = 10_000
MAX_EVENT_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of request body, where it goes, and the statuses it may get."""

    name: str
    path: str
    content_type: str
    body: bytes
    expected: frozenset[int]


def empty_objects(size: int) -> bytes:
    """``[{},{},...]`` of at most ``size`` bytes."""
    return b"[" + b",".join([b"{}"] * ((size - 2) // 3)) + b"]"


def kinds() -> list[Kind]:
    """The bodies, worst first, then the largest valid batch."""
    huge = b'{"meterId":"M1","padding":' + empty_objects(BODY_BYTES - 64) + b"}"
    batch = orjson.dumps([event.body for event in simulated_events(MAX_EVENTS)])
    refused = frozenset({413, 503})
    return [
        Kind(
            "empty-objects",
            "/v1/ingest/batch",
            "application/json",
            empty_objects(BODY_BYTES),
            refused,
        ),
        Kind("ndjson-one-line", "/v1/ingest/batch", "application/x-ndjson", huge + b"\n", refused),
        Kind("single-5mb", "/v1/ingest", "application/json", huge, refused),
        Kind("max-batch", "/v1/ingest/batch", "application/json", batch, frozenset({202, 503})),
    ]


async def post(port: int, api_key: str, kind: Kind) -> int:
    """Send one request of ``kind`` on a connection of its own; the answer's status (0: none).

    The body is written while the answer is awaited: the gateway may answer
    (413, 503) before it has read the body, and close the connection.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {kind.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Type: {kind.content_type}\r\nContent-Length: {len(kind.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(head)
            writer.write(kind.body)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            status_line = await reader.readline()
            await reader.read()  # the rest of the answer, until the gateway closes
    except ConnectionError:
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    parts = status_line.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


async def rounds(port: int, api_key: str, kind: Kind, concurrency: int, count: int) -> Counter[int]:
    """``count`` rounds of ``concurrency`` requests of ``kind`` at once; statuses counted."""
    statuses: Counter[int] = Counter()
    for _ in range(count):
        answers = await asyncio.gather(*(post(port, api_key, kind) for _ in range(concurrency)))
        statuses.update(answers)
    return statuses


def time_per_call(call: Any, budget_s: float = 2.0) -> float:
    """Seconds per call of ``call()``, the best of a few repetitions within ``budget_s``."""
    best = float("inf")
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def scan_cost() -> dict[str, float]:
    """The scan against orjson's parse of the same realistic 10,000-event batch, in microseconds.

    Also the route's whole work on that body before publishing (scan, then
    parse and validate each event), so the scan's share of it shows.
    """
    events = [event.body for event in simulated_events(MAX_EVENTS)]
    array = orjson.dumps(events)
    ndjson = b"\n".join(orjson.dumps(event) for event in events) + b"\n"
    settings = GatewaySettings(api_keys="bench")
    topics, limits = settings.topics(), settings.limits()
    figures = {
        "array_scan_us": time_per_call(lambda: array_events(array, MAX_EVENTS, MAX_EVENT_BYTES)),
        "array_parse_us": time_per_call(lambda: orjson.loads(array)),
        "ndjson_scan_us": time_per_call(lambda: ndjson_events(ndjson, MAX_EVENTS, MAX_EVENT_BYTES)),
        "ndjson_parse_us": time_per_call(lambda: [orjson.loads(line) for line in ndjson.split()]),
        "array_route_us": time_per_call(
            lambda: batch_messages(array_events(array, MAX_EVENTS, MAX_EVENT_BYTES), topics, limits)
        ),
    }
    result = {name: round(seconds * 1e6, 1) for name, seconds in figures.items()}
    for name, part, whole in [
        ("array_scan_to_parse", "array_scan_us", "array_parse_us"),
        ("ndjson_scan_to_parse", "ndjson_scan_us", "ndjson_parse_us"),
        ("array_scan_to_route", "array_scan_us", "array_route_us"),
    ]:
        result[name] = round(figures[part] / figures[whole], 3)
    say(
        f"bench-gateway-memory: scan of a 10,000-event batch ({len(array):,} bytes): JSON array "
        f"{result['array_scan_us']:,.0f} us, parsing it {result['array_parse_us']:,.0f} us "
        f"(scan/parse {result['array_scan_to_parse']:.2f}); NDJSON {result['ndjson_scan_us']:,.0f} "
        f"us, parsing it {result['ndjson_parse_us']:,.0f} us (scan/parse "
        f"{result['ndjson_scan_to_parse']:.2f}); the route's whole work before publishing "
        f"{result['array_route_us']:,.0f} us (scan/route {result['array_scan_to_route']:.3f})"
    )
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_memory", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample-ms", type=float, default=10.0)
    parser.add_argument("--limit-mb", type=float, default=200.0)
    parser.add_argument("--kafka", help="bootstrap servers (default: see above)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every kind; the last stdout line is the JSON result."""
    args = parse_args(argv)
    scan = scan_cost()
    bodies = kinds()
    peaks: dict[str, float] = {}
    statuses: dict[str, dict[int, int]] = {}
    unexpected = 0
    with (
        kafka_for_run(args.kafka) as bootstrap,
        kafka_topics(bootstrap, f"bench-gwmem-{secrets.token_hex(3)}") as topics,
        GatewayProcess(bootstrap, topics, workers=1) as gateway,
    ):
        (worker,) = gateway.worker_pids()
        idle_mb = psutil.Process(worker).memory_info().rss / MIB
        say(f"bench-gateway-memory: gateway worker {worker}, idle RSS {idle_mb:.1f} MB")
        for kind in bodies:
            with PeakRss([worker], every_s=args.sample_ms / 1000) as rss:
                seen = asyncio.run(
                    rounds(gateway.port, gateway.api_key, kind, args.concurrency, args.rounds)
                )
            peaks[kind.name] = round(rss.mib()[worker], 1)
            statuses[kind.name] = dict(sorted(seen.items()))
            unexpected += sum(n for status, n in seen.items() if status not in kind.expected)
            say(
                f"bench-gateway-memory: {kind.name} ({len(kind.body):,} bytes, {args.rounds} x "
                f"{args.concurrency} at once): peak RSS {peaks[kind.name]:.1f} MB, statuses "
                f"{statuses[kind.name]}"
            )
        after_mb = psutil.Process(worker).memory_info().rss / MIB
    peak = max(peaks.values())
    within = peak <= args.limit_mb
    say(
        f"bench-gateway-memory: peak RSS {peak:.1f} MB (limit {args.limit_mb:g} MB): "
        f"{'within' if within else 'OVER'}; idle {idle_mb:.1f} MB before, {after_mb:.1f} MB after"
    )
    result: dict[str, Any] = {
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "idle_rss_mb": round(idle_mb, 1),
        "after_rss_mb": round(after_mb, 1),
        "peak_rss_mb": peaks,
        "statuses": statuses,
        "unexpected_statuses": unexpected,
        "limit_mb": args.limit_mb,
        "within_limit": within,
        **scan,
    }
    print(json_line(result), flush=True)
    return 0 if within and not unexpected else 1


if __name__ == "__main__":
    raise SystemExit(main())
