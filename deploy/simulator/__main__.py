"""``energy-simulate``: a simulated fleet into the gateway or Kafka.

Also runs as ``python -m deploy.simulator`` from a checkout.

Examples::

    # 3 simulated hours of 200 vehicles, ending now, 500 events per request
    energy-simulate --devices 200 --hours 3 --batch-size 500 --truth truth.json
    # 10,000 devices in real time (333 events/s, smooth), for 5 minutes
    energy-simulate --devices 10000 --realtime --minutes 5
    # straight to Kafka, as a producer team would
    energy-simulate --devices 1000 --hours 1 --target kafka

Progress goes to stderr; the summary (sent, accepted, rejected, retried,
rate) follows, and with ``--json`` one JSON object is the last stdout line.
Exit code 0 when every event was accepted, 1 if any was not, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka.errors import KafkaError

from deploy.local.devstack import DevStack, StackNotRunning
from deploy.simulator.fleet import MINUTE, Fleet, FleetConfig, accelerated_window
from deploy.simulator.run import Runner, RunStats
from deploy.simulator.targets import HttpTarget, KafkaTarget, Target
from deploy.simulator.truth import DAY, GroundTruth


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="energy-simulate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--devices", type=int, default=100, help="vehicles (and as many meters)")
    fleet.add_argument("--seed", type=int, default=1, help="same seed, same events")
    fleet.add_argument("--faulty-share", type=float, default=0.1, help="vehicles at 0.70-0.84")
    fleet.add_argument("--fast-share", type=float, default=0.15, help="DC fast chargers")
    fleet.add_argument("--prefix", default="sim-", help="device id prefix (one per run)")
    mode = parser.add_argument_group("mode")
    mode.add_argument("--hours", type=float, default=1.0, help="accelerated: hours ending now")
    mode.add_argument("--realtime", action="store_true", help="send at wall-clock time")
    mode.add_argument("--minutes", type=int, default=0, help="realtime: minutes (0: until ^C)")
    target = parser.add_argument_group("target")
    target.add_argument("--target", choices=["http", "kafka"], default="http")
    target.add_argument("--url", help="gateway URL (default: the local stack's)")
    target.add_argument("--api-key", help="default: ENERGY_API_KEY or the local stack's key")
    target.add_argument("--kafka", help="bootstrap servers (default: the local stack's)")
    target.add_argument("--stack-dir", help="local stack folder (default .stack/dev)")
    target.add_argument("--batch-size", type=int, default=1, help="events per HTTP request")
    target.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    target.add_argument("--max-retries", type=int, default=20, help="per request, then rejected")
    out = parser.add_argument_group("output")
    out.add_argument("--truth", help="write per-vehicle 24 h ground truth as JSON ('-': stdout)")
    out.add_argument("--json", action="store_true", help="print the summary as a JSON line")
    out.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.batch_size < 1 or args.concurrency < 1:
        parser.error("--devices, --batch-size and --concurrency must be at least 1")
    if args.hours <= 0:
        parser.error("--hours must be positive")
    return args


async def make_target(args: argparse.Namespace, stack: DevStack) -> Target:
    """The HTTP or Kafka target the arguments ask for, connected."""
    if args.target == "kafka":
        kafka = KafkaTarget(args.kafka or stack.kafka_bootstrap, args.concurrency, args.max_retries)
        await kafka.start()
        return kafka
    api_key = args.api_key or stack.api_key()
    return HttpTarget(args.url or stack.gateway_url, api_key, args.concurrency, args.max_retries)


async def simulate(args: argparse.Namespace) -> tuple[RunStats, GroundTruth]:
    """Run the simulation the arguments describe; returns its counts and ground truth."""
    stack = DevStack.locate(args.stack_dir)
    config = FleetConfig(args.devices, args.seed, args.faulty_share, args.fast_share, args.prefix)
    fleet = Fleet(config)
    if args.realtime:
        # Real time starts with the current minute; the truth covers its first day.
        start, minutes = datetime.now(UTC).replace(second=0, microsecond=0), args.minutes
        truth = GroundTruth(fleet.meter_of, fleet.faulty_ids, start, start + DAY)
    else:
        start, minutes = accelerated_window(args.hours)
        truth = GroundTruth.last_day(fleet.meter_of, fleet.faulty_ids, start + minutes * MINUTE)
    target = await make_target(args, stack)
    runner = Runner(fleet, target, truth, args.batch_size, progress=not args.quiet)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runner.stop.set)
    try:
        if args.realtime:
            stats = await runner.realtime(start, minutes or None)
        else:
            stats = await runner.accelerated(start, minutes)
    finally:
        await target.close()
    return stats, truth


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``energy-simulate``."""
    args = parse_args(argv)
    try:
        stats, truth = asyncio.run(simulate(args))
    except StackNotRunning as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    except (OSError, KafkaError) as exc:
        print(f"simulate: cannot reach the target: {exc!r}", file=sys.stderr)
        return 2
    print(f"simulate: {stats.summary()}", file=sys.stderr)
    for error in stats.errors:
        print(f"simulate: not accepted: {error}", file=sys.stderr)
    if args.truth:
        text = orjson.dumps(truth.as_json(), option=orjson.OPT_INDENT_2)
        if args.truth == "-":
            sys.stdout.write(text.decode() + "\n")
        else:
            Path(args.truth).write_bytes(text + b"\n")
    if args.json:
        sys.stdout.write(orjson.dumps(stats.as_json()).decode() + "\n")
    return 1 if stats.rejected else 0


if __name__ == "__main__":
    raise SystemExit(main())
