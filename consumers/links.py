"""Vehicle-to-meter links: every link event is a claim; the effective links are a function of them.

The rule (the README's "Links" section says it for users, ``sql/0009`` in SQL):

- A claim is (vehicle, meter, ``validFrom``, ``validTo`` or open). A replay of
  a claim changes nothing. The same claim repeated with another explicit
  ``validTo`` keeps the earliest end: an end can be brought forward, never
  pushed back, and an open repeat never reopens it. The earliest of a set is
  the same whatever order it arrives in.
- A claim's effective link runs from its ``validFrom`` to the earliest of its
  ``validTo``, the next later ``validFrom`` among the claims of the same
  vehicle, and the next later ``validFrom`` among the claims of the same
  meter: the latest-starting claim wins from its start on, on the vehicle
  and on the meter side, whichever arrives first.
- Two claims starting at the same instant on one vehicle with different
  meters, or on one meter with different vehicles, are *contested*: neither
  takes effect (both still end earlier claims at that instant). The analytics
  API's ``GET /v1/links/{vehicleId}`` shows them, and
  ``energy_consumer_link_claims_contested_total`` counts them.

The effective links (``vehicle_meter_links``, what analytics reads) are thus
a function of the set of claims, which does not depend on arrival order, so
neither do they, and no link is refused for contradicting another. Exclusion
constraints on the vehicle and on the meter side are the safety net: a meter
serves at most one vehicle at any instant, so its energy is never counted
twice. Only what the database refuses as invalid is dead-lettered.

Device replacements (:class:`schemas.DeviceReplacement`) travel on the same
topic: each new one is stored and the replaced device's first reading at or
after it is counted again (:meth:`consumers.registers.RegisterBook.recount`),
under a lock on the device's live status table that readings of that stream
wait for (a replacement is rare; its transaction is short).

One batch, one transaction, in this order::

    lock -> count contested -> add claims -> recompute the effective links of
    every vehicle and meter the batch touched -> count contested -> commit

Concurrency: links are keyed by vehicle, but one claim's effective end depends
on the claims of its vehicle AND of its meter, and a meter is shared by
vehicles on other partitions (other workers): a batch can change the link of
a vehicle it never mentions (through a shared meter), and that link also
depends on that vehicle's other meters. Locks per vehicle and meter would
have to cover that whole chain, taken in a changing order. Instead every link
transaction takes one transaction-level advisory lock: link transactions run
one at a time, each sees every claim committed before it, and none can
deadlock another. Link events are rare (one per re-link), so the wait is
short; readings never take this lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from psycopg import AsyncConnection, sql

from consumers.batch import Batch, Entry
from consumers.connection import WriterConnection, in_transaction
from consumers.readings import add_to_rollup, noted
from consumers.registers import RegisterBook, RegisterRules
from consumers.sink import INVALID_ROW_ERRORS, Rejected, WriteResult, describe
from consumers.tables import READING_TABLES
from schemas import DeviceReplacement, VehicleMeterLink

#: Arbitrary constant naming the advisory lock every link transaction holds
#: until it ends ("links" in ASCII).
LINKS_LOCK_KEY = 0x6C696E6B73

_LOCK = "SELECT pg_advisory_xact_lock(%s)"

# One row per claim: repeats within the batch keep their earliest end (min()
# ignores NULLs), a stored claim's end only moves earlier. RETURNING gives the
# claims that are new or changed.
_ADD_CLAIMS = """
INSERT INTO vehicle_meter_link_claims AS c (vehicle_id, meter_id, valid_from, valid_to)
SELECT e.vehicle_id, e.meter_id, e.valid_from, min(e.valid_to)
FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[])
     AS e(vehicle_id, meter_id, valid_from, valid_to)
GROUP BY e.vehicle_id, e.meter_id, e.valid_from
ON CONFLICT (vehicle_id, valid_from, meter_id) DO UPDATE SET valid_to = excluded.valid_to
WHERE excluded.valid_to < coalesce(c.valid_to, 'infinity')
RETURNING 1
"""

_COUNT_CONTESTED = "SELECT count(*) FROM energy_link_claims_of(%s, %s) WHERE contested"

_APPLY = "SELECT energy_apply_link_claims(%s, %s)"

# New replacements (a repeat is dropped); RETURNING gives the new ones.
_ADD_REPLACEMENTS = """
INSERT INTO device_replacements (stream, device_id, replaced_at)
SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[])
ON CONFLICT DO NOTHING
RETURNING stream, device_id, replaced_at
"""


class LinkSink:
    """Keeps link events as claims and the effective links equal to the rule over them."""

    def __init__(self, db: WriterConnection, rules: RegisterRules | None = None) -> None:
        self._db = db
        rules = rules or RegisterRules()
        self._books = {
            stream.value: RegisterBook(table, rules) for stream, table in READING_TABLES.items()
        }

    async def write(self, batch: Batch) -> WriteResult:
        """Apply the batch's links; see :meth:`store`."""
        return await self._db.run(lambda conn: self.store(conn, batch.links))

    async def store(
        self, conn: AsyncConnection, events: Sequence[Entry[VehicleMeterLink | DeviceReplacement]]
    ) -> WriteResult:
        """Add ``links`` as claims and recompute what they touch, in one transaction.

        Idempotent: a replay changes nothing. ``inserted`` counts the claims
        that are new or whose end moved earlier, ``duplicates`` the events that
        changed nothing, ``contested`` the claims that became contested. A
        claim the database refuses as invalid is rejected with its reason
        while the rest is stored. Replacements count as inserted when new.
        Raises :class:`SinkUnavailable`; safe to retry.
        """
        links = [(e, s) for e, s in events if isinstance(e, VehicleMeterLink)]
        swaps = [e for e, _ in events if isinstance(e, DeviceReplacement)]
        if not links and not swaps:
            return WriteResult()

        async def work() -> WriteResult:
            replaced, notes = await self._replace(conn, swaps)
            if not links:
                return WriteResult(replaced, len(swaps) - replaced, notes=notes)
            await conn.execute(_LOCK, (LINKS_LOCK_KEY,))
            touched = _ids(link for link, _ in links)
            before = await _count_contested(conn, touched)
            changed, rejected = await self._add_claims(conn, links)
            await conn.execute(_APPLY, touched)
            after = await _count_contested(conn, touched)
            duplicates = len(events) - len(rejected) - changed - replaced
            return WriteResult(
                changed + replaced, duplicates, rejected, contested=after - before, notes=notes
            )

        return await in_transaction(conn, work)

    async def _replace(
        self, conn: AsyncConnection, swaps: Sequence[DeviceReplacement]
    ) -> tuple[int, dict[tuple[str, str], int]]:
        """Store new replacements and recount the reading each one reaches; how many were
        new, and the notes the recounted readings got."""
        if not swaps:
            return 0, {}
        columns = (
            [s.stream for s in swaps],
            [s.device_id for s in swaps],
            [s.replaced_at for s in swaps],
        )
        cur = await conn.execute(_ADD_REPLACEMENTS, columns)
        new = await cur.fetchall()
        notes: Counter[tuple[str, str]] = Counter()
        for stream in sorted({row[0] for row in new}):
            book = self._books[stream]
            # Readings of the stream wait while its readings are recounted.
            await conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                    sql.Identifier(book.table.live)
                )
            )
            keys = [(device, book.before(at)) for s, device, at in new if s == stream]
            adjustments = await book.recount(conn, keys)
            await add_to_rollup(conn, book.table, (), adjustments)
            notes.update(noted(stream, adjustments))
        return len(new), dict(notes)

    async def _add_claims(
        self, conn: AsyncConnection, links: Sequence[Entry[VehicleMeterLink]]
    ) -> tuple[int, list[Rejected]]:
        """Claims new or changed, and the links the database refused (each alone, then)."""
        try:
            async with conn.transaction():
                return await _insert(conn, [link for link, _ in links]), []
        except INVALID_ROW_ERRORS:
            pass
        # Rare: a link the database refuses. One savepoint per link finds it.
        changed, rejected = 0, []
        for link, source in links:
            try:
                async with conn.transaction():
                    changed += await _insert(conn, [link])
            except INVALID_ROW_ERRORS as exc:
                rejected.append(Rejected(source, "database", describe(exc)))
        return changed, rejected


async def _insert(conn: AsyncConnection, links: Sequence[VehicleMeterLink]) -> int:
    columns = (
        [link.vehicle_id for link in links],
        [link.meter_id for link in links],
        [link.valid_from for link in links],
        [link.valid_to for link in links],
    )
    cur = await conn.execute(_ADD_CLAIMS, columns)
    return len(await cur.fetchall())


def _ids(links: Iterable[VehicleMeterLink]) -> tuple[list[str], list[str]]:
    """The vehicles and the meters of ``links``, each sorted and once."""
    vehicles, meters = set(), set()
    for link in links:
        vehicles.add(link.vehicle_id)
        meters.add(link.meter_id)
    return sorted(vehicles), sorted(meters)


async def _count_contested(conn: AsyncConnection, touched: tuple[list[str], list[str]]) -> int:
    cur = await conn.execute(_COUNT_CONTESTED, touched)
    row = await cur.fetchone()
    return int(row[0]) if row else 0
