"""``make demo``: a simulated fleet through the running stack, then its analytics, verified.

    python -m deploy.simulator.demo [--devices 200] [--hours 3] [--stack-dir .stack/dev]

1. checks that the stack of ``make up`` answers (exit 2 with what to run if not);
2. simulates the fleet (fresh device ids per run, so a second run verifies
   too: the system deduplicates readings by device and timestamp), linked
   first, heartbeats in batches of 500 through the gateway;
3. waits until the consumers caught up: every vehicle's reading counts in
   the analytics API equal what the gateway accepted;
4. prints the 24-hour performance of a handful of vehicles, faulty ones
   included, and checks every vehicle against the simulator's ground truth:
   totals to 1e-9 relative, and ``lowEfficiency`` set exactly for the faulty.

Exit code 0 when everything matches, 1 on any mismatch or refused event.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from datetime import UTC, datetime

from deploy.local.devstack import DevStack, StackNotRunning
from deploy.simulator import Fleet, FleetConfig, GroundTruth, HttpTarget, Runner
from deploy.simulator.fleet import MINUTE, accelerated_window, iso_utc
from deploy.simulator.verify import Comparison, PerformanceClient, compare, render_table


def say(message: str) -> None:
    """One progress line."""
    print(f"demo: {message}", file=sys.stderr, flush=True)


async def wait_caught_up(
    client: PerformanceClient, truth: GroundTruth, timeout_s: float
) -> dict[str, dict[str, object]]:
    """Poll until every vehicle's reading counts match the truth; returns the last answers.

    Raises ``TimeoutError`` naming how many vehicles were still behind.
    """
    expected = {v.vehicle_id: v for v in truth.vehicles()}
    answers: dict[str, dict[str, object]] = {}
    behind = set(expected)
    started = time.monotonic()
    last_report = started
    while behind:
        fetched = await client.fetch_many(sorted(behind), truth.start, truth.end)
        for vehicle_id, answer in fetched.items():
            want = expected[vehicle_id]
            if answer is not None and (
                answer["vehicleReadings"] == want.vehicle_readings
                and answer["meterReadings"] == want.meter_readings
            ):
                answers[vehicle_id] = answer
                behind.discard(vehicle_id)
        now = time.monotonic()
        if not behind:
            break
        if now - started > timeout_s:
            raise TimeoutError(
                f"{len(behind)} of {len(expected)} vehicles still behind after {timeout_s:.0f} s"
            )
        if now - last_report >= 2.0:
            say(f"waiting for the consumers: {len(expected) - len(behind)}/{len(expected)} done")
            last_report = now
        await asyncio.sleep(0.5)
    return answers


def showcase(truth: GroundTruth, count: int) -> list[str]:
    """A handful of vehicles for the table: faulty and healthy ones that charged, one idle."""
    charged = [v for v in truth.vehicles() if v.total_ac > 0]
    faulty = [v.vehicle_id for v in charged if v.faulty][: max(1, count // 2)]
    healthy = [v.vehicle_id for v in charged if not v.faulty][: count - len(faulty) - 1]
    idle = [v.vehicle_id for v in truth.vehicles() if v.total_ac == 0][:1]
    return sorted(faulty + healthy + idle)


async def run(args: argparse.Namespace) -> int:
    """The whole demo; returns the exit code."""
    stack = DevStack.locate(args.stack_dir)
    stack.require_up()
    api_key = stack.api_key()
    prefix = f"demo-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(2)}-"
    fleet = Fleet(FleetConfig(args.devices, args.seed, args.faulty_share, prefix=prefix))
    start, minutes = accelerated_window(args.hours)
    truth = GroundTruth.last_day(fleet.meter_of, fleet.faulty_ids, start + minutes * MINUTE)
    say(
        f"{args.devices} vehicles + {args.devices} meters (ids {prefix}*), "
        f"{len(fleet.faulty_ids)} faulty, {args.hours:g} h from {iso_utc(start)} "
        f"through {stack.gateway_url}"
    )
    target = HttpTarget(stack.gateway_url, api_key, concurrency=4, max_retries=20)
    try:
        stats = await Runner(fleet, target, truth, args.batch_size).accelerated(start, minutes)
    finally:
        await target.close()
    say(f"sent: {stats.summary()}")
    if stats.rejected:
        for error in stats.errors:
            say(f"not accepted: {error}")
        say("FAILED: the gateway refused events (see above)")
        return 1

    client = PerformanceClient(stack.analytics_url, api_key)
    waited = time.monotonic()
    try:
        answers = await wait_caught_up(client, truth, args.timeout)
    except TimeoutError as exc:
        say(f"FAILED: the consumers did not catch up: {exc}")
        return 1
    finally:
        await client.close()
    say(f"consumers caught up {time.monotonic() - waited:.1f} s after the last 202")

    results = [compare(truth.vehicle(v), answers[v], args.tolerance) for v in sorted(answers)]
    shown = set(showcase(truth, args.show))
    window = f"[{iso_utc(truth.start)}, {iso_utc(truth.end)})"
    print(f"24-hour performance {window}, {len(shown)} of {len(results)} vehicles:")
    print(render_table([r for r in results if r.vehicle_id in shown]))
    return report(results, args.tolerance)


def report(results: list[Comparison], tolerance: float) -> int:
    """Print the verdict over every vehicle; 0 when all match."""
    bad = [r for r in results if not r.ok]
    worst = max((r.max_relative_error for r in results), default=0.0)
    flagged = sum(1 for r in results if r.api_low_efficiency)
    faulty_charged = sum(1 for r in results if r.faulty and r.charged)
    if bad:
        print(f"MISMATCH: {len(bad)} of {len(results)} vehicles differ from the ground truth:")
        for result in bad[:10]:
            print(f"  {result.vehicle_id}: {'; '.join(result.problems)}")
        return 1
    print(
        f"verified: the API's totals for all {len(results)} vehicles equal the simulator's "
        f"ground truth (AC, DC, efficiency, avg battery temp, reading counts; max relative "
        f"difference {worst:.1e}, tolerance {tolerance:g}); lowEfficiency flags "
        f"{flagged} vehicles = the {faulty_charged} faulty ones that charged"
    )
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m deploy.simulator.demo", description=__doc__)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--faulty-share", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--show", type=int, default=8, help="vehicles in the table")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to catch up")
    parser.add_argument("--tolerance", type=float, default=1e-9, help="relative")
    parser.add_argument("--stack-dir", help="local stack folder (default .stack/dev)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m deploy.simulator.demo``."""
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except StackNotRunning as exc:
        say(str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
