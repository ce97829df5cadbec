"""A bounded number of heavy queries at once, so that they cannot take the whole pool.

The fleet view (JSON or CSV) reads every vehicle's rollups over its window: its
cost grows with the fleet, up to the statement timeout. Every other route reads
one device by key (the hourly series of one vehicle too, at most one row per
hour of a 31-day window), in milliseconds. Fleet queries therefore take a slot
of :class:`QuerySlots` before they take a pooled connection; with fewer slots
than connections, per-vehicle requests always find one. A fleet request that
finds every slot taken waits its turn for a bounded time, then is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import Counter

from analytics_api.errors import FleetBusy

FLEET_REFUSED = Counter(
    "energy_analytics_fleet_refused_total",
    "Fleet requests refused (503 fleet_busy) because every fleet slot stayed taken.",
)


class QuerySlots:
    """At most ``limit`` holders at once; a newcomer waits up to ``wait_s`` for its turn.

    One instance per app (and so per process, like the pool it protects).
    """

    def __init__(self, limit: int, wait_s: float) -> None:
        self.limit = limit
        self._wait_s = wait_s
        self._free = asyncio.Semaphore(limit)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block.

        Raises :class:`FleetBusy` (counted in ``energy_analytics_fleet_refused_total``)
        when none frees within ``wait_s``; nothing has run then, so it is safe to retry.
        """
        try:
            async with asyncio.timeout(self._wait_s):
                await self._free.acquire()
        except TimeoutError:
            FLEET_REFUSED.inc()
            raise FleetBusy(
                f"{self.limit} fleet queries are running; none ended within {self._wait_s:g} s"
            ) from None
        try:
            yield
        finally:
            self._free.release()
