"""Driving a fleet into a target: links first, then heartbeats, accelerated or in real time.

Accelerated mode produces the minutes of a past window as fast as the target
takes them; real-time mode sends each heartbeat at its own second of the
current minute, so D devices make a smooth D/60 requests a second. In both,
``concurrency`` senders take batches from a bounded queue, so memory stays
flat and the target sets the pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from typing import Any, TextIO

from deploy.simulator.fleet import MINUTE, Fleet, SimEvent
from deploy.simulator.targets import Delivery, Target
from deploy.simulator.truth import GroundTruth

#: Error messages kept for the summary (the counts cover all of them).
MAX_ERRORS_KEPT = 5


@dataclass(slots=True)
class RunStats:
    """Counts of one run; ``rejected`` is every event that was not accepted."""

    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    retried: int = 0
    requests: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def elapsed_s(self) -> float:
        """Seconds from start to finish (or to now while running)."""
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Accepted events per second over the whole run."""
        return self.accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def add(self, delivery: Delivery) -> None:
        """Account for one finished send."""
        self.requests += 1
        self.accepted += len(delivery.accepted)
        self.rejected += len(delivery.rejected)
        self.retried += delivery.retries
        if delivery.error and len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(delivery.error)

    def as_json(self) -> dict[str, Any]:
        """The summary as one JSON object."""
        return {
            "sent": self.sent,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "retried": self.retried,
            "requests": self.requests,
            "seconds": round(self.elapsed_s, 3),
            "events_per_s": round(self.rate, 1),
            "errors": self.errors,
        }

    def summary(self) -> str:
        """One line for people."""
        return (
            f"sent {self.sent:,}, accepted {self.accepted:,}, rejected {self.rejected:,}, "
            f"retried {self.retried:,} in {self.elapsed_s:.1f} s ({self.rate:,.0f} events/s, "
            f"{self.requests:,} requests)"
        )


class Progress:
    """A throttled live-rate line on stderr (at most one per ``interval_s``)."""

    def __init__(self, stats: RunStats, interval_s: float = 2.0, out: TextIO = sys.stderr) -> None:
        self.stats = stats
        self.interval_s = interval_s
        self.out = out
        self._last_at = stats.started
        self._last_accepted = 0
        self.note = ""

    def tick(self, force: bool = False) -> None:
        """Print the line if ``interval_s`` passed since the last one (or ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_at < self.interval_s:
            return
        stats = self.stats
        live = (stats.accepted - self._last_accepted) / max(now - self._last_at, 1e-9)
        self._last_at, self._last_accepted = now, stats.accepted
        print(
            f"simulate: {stats.accepted:,}/{stats.sent:,} accepted, {stats.rejected:,} rejected, "
            f"{stats.retried:,} retried, {live:,.0f} events/s {self.note}",
            file=self.out,
            flush=True,
        )


class Runner:
    """Sends a fleet's events to a target and records what was accepted."""

    def __init__(
        self,
        fleet: Fleet,
        target: Target,
        truth: GroundTruth | None,
        batch_size: int,
        progress: bool = True,
    ) -> None:
        self.fleet = fleet
        self.target = target
        self.truth = truth
        self.batch_size = batch_size
        self.stats = RunStats()
        self.progress = Progress(self.stats) if progress else None
        self.stop = asyncio.Event()

    async def _drain(self, queue: asyncio.Queue[list[SimEvent] | None]) -> None:
        while (events := await queue.get()) is not None:
            delivery = await self.target.deliver(events)
            self.stats.add(delivery)
            if self.truth is not None:
                self.truth.record(delivery.accepted)
            if self.progress is not None:
                self.progress.tick()

    async def _pump(
        self, batches: Iterable[list[SimEvent]] | AsyncIterator[list[SimEvent]]
    ) -> None:
        """Deliver ``batches`` with ``concurrency`` senders; returns when all are answered.

        When :attr:`stop` is set no new batch is taken, and what is queued or
        in flight is still delivered and counted.
        """
        queue: asyncio.Queue[list[SimEvent] | None] = asyncio.Queue(self.target.concurrency * 2)
        senders = [asyncio.create_task(self._drain(queue)) for _ in range(self.target.concurrency)]
        source = batches if isinstance(batches, AsyncIterator) else _aiter(batches)
        try:
            async for batch in source:
                if self.stop.is_set():
                    break
                self.stats.sent += len(batch)
                await queue.put(batch)
            for _ in senders:
                await queue.put(None)
            await asyncio.gather(*senders)
        finally:
            for task in senders:
                task.cancel()

    async def send_links(self, valid_from: datetime) -> None:
        """Link every vehicle to its meter, one event per request, and wait for the answers."""
        await self._pump([link] for link in self.fleet.links(valid_from))

    async def accelerated(self, start: datetime, minutes: int) -> RunStats:
        """Links (valid from a minute before ``start``), then ``minutes`` of heartbeats."""
        await self.send_links(start - MINUTE)
        await self._pump(self._accelerated_batches(start, minutes))
        return self._finish()

    def _accelerated_batches(self, start: datetime, minutes: int) -> Iterator[list[SimEvent]]:
        pending: list[SimEvent] = []
        for number, events in enumerate(self.fleet.minutes(start, minutes), start=1):
            if self.progress is not None:
                self.progress.note = f"(minute {number}/{minutes})"
            pending.extend(events)
            # Cut whole batches, carry the rest into the next minute (one copy each).
            whole = len(pending) - len(pending) % self.batch_size
            yield from chunk(pending[:whole], self.batch_size)
            pending = pending[whole:]
        if pending:
            yield pending

    async def realtime(self, first: datetime, minutes: int | None) -> RunStats:
        """Heartbeats at wall-clock time, each device at its second; ``None`` runs until stopped.

        ``first`` is the current minute: devices whose second has passed send
        at once, the rest on time.
        """
        await self.send_links(first - MINUTE)
        await self._pump(self._realtime_batches(first, minutes))
        return self._finish()

    async def _realtime_batches(
        self, first: datetime, minutes: int | None
    ) -> AsyncIterator[list[SimEvent]]:
        number = 0
        while minutes is None or number < minutes:
            minute_start = first + number * MINUTE
            number += 1
            if self.progress is not None:
                self.progress.note = f"(minute {number}" + (f"/{minutes})" if minutes else ")")
            for at, group in by_second(self.fleet.minute(minute_start)):
                delay = (at - datetime.now(UTC)).total_seconds()
                if delay > 0:
                    # Wake early if stopped, rather than sleep out the minute.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), delay)
                if self.stop.is_set():
                    return
                for batch in chunk(group, self.batch_size):
                    yield batch

    def _finish(self) -> RunStats:
        self.stats.finished = time.monotonic()
        if self.progress is not None:
            self.progress.tick(force=True)
        return self.stats


async def _aiter(items: Iterable[list[SimEvent]]) -> AsyncIterator[list[SimEvent]]:
    for item in items:
        yield item


def chunk(events: list[SimEvent], size: int) -> Iterator[list[SimEvent]]:
    """``events`` in consecutive lists of at most ``size``."""
    for index in range(0, len(events), size):
        yield events[index : index + size]


def by_second(events: list[SimEvent]) -> Iterator[tuple[datetime, list[SimEvent]]]:
    """Consecutive events grouped by their device time (they come sorted by second)."""
    for at, group in groupby(events, key=lambda e: e.at):
        yield at, list(group)
