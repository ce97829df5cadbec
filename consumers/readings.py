"""The readings' sink: history by COPY, hourly rollups, live status by one multi-row upsert.

Each write is ONE transaction. Inside it:

0. live status is upserted from the newest reading per device, which locks
   the batch's devices and tells which readings are late; register readings
   get their energy (:mod:`consumers.registers`);
1. history gets a straight binary COPY (the fast path); if any row is already
   stored or repeats within the batch, a unique violation rolls back to a
   savepoint and the first occurrences go through a staging table with
   ``ON CONFLICT DO NOTHING`` (the duplicate-tolerant path: first write wins);
2. a row whose day has no partition yet (maintenance fell behind) is not
   invalid: the day's partition is created and the batch written again;
   a row the database refuses as invalid is isolated by bisection inside
   savepoints and reported as rejected, while the rest of the batch is written;
3. late register readings that were inserted, and the readings after them,
   are counted again from history;
4. the hourly rollups get the counts and sums of the rows actually inserted
   (a replayed row was not inserted, so it is never counted twice), and the
   changes of step 3.

A row the database refuses rolls the transaction back, and the batch is
written again without it: live status never shows a refused reading.

Transient failures (connection lost, server restarting, serialization or
deadlock, statement timeout) raise :class:`SinkUnavailable`: nothing was
committed and the same batch can be written again. Links are applied by
:mod:`consumers.links`.
"""

from __future__ import annotations

import logging
import operator
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from functools import partial
from typing import Any

from psycopg import AsyncConnection, errors, sql

from consumers import metrics
from consumers.batch import Batch, Entry
from consumers.connection import WriterConnection, in_transaction
from consumers.errors import MissingPartition
from consumers.registers import Adjustment, Note, RegisterBook, RegisterRules
from consumers.sink import INVALID_ROW_ERRORS, Rejected, WriteResult, describe
from consumers.tables import READING_TABLES, ReadingTable, Row, row_key

log = logging.getLogger(__name__)

#: Creates one day's history partition, a no-op when it exists (sql/0004).
_ENSURE_PARTITION = "SELECT energy_ensure_partition(%s, %s)"

#: The rollup upsert of each reading stream.
_ROLLUPS = {
    (table.stream, notes): table.upsert_rollup(notes)
    for table in READING_TABLES.values()
    for notes in (False, True)
}

#: The event of an entry (at C speed, for whole batches).
_value = operator.itemgetter(0)


class ReadingSink:
    """Writes batches of one reading stream into its history, rollup and live tables."""

    def __init__(
        self, table: ReadingTable, db: WriterConnection, rules: RegisterRules | None = None
    ) -> None:
        self.table = table
        self._db = db
        self.registers = RegisterBook(table, rules or RegisterRules())
        self._copy = table.copy_history()
        self._copy_staging = table.copy_history(table.staging)
        self._create_staging = table.create_staging()
        self._merge = table.merge_staging()

    async def write(self, batch: Batch) -> WriteResult:
        """Store the batch's readings; see :meth:`store`.

        A day without a history partition is created, and the batch written
        again: readings are never dead-lettered because maintenance is late.
        """
        try:
            return await self._db.run(lambda conn: self.store(conn, batch.readings))
        except MissingPartition:
            days = sorted({row[1].astimezone(UTC).date() for row, _ in batch.readings})
            await self._db.run(lambda conn: self._create_partitions(conn, days))
            return await self._db.run(lambda conn: self.store(conn, batch.readings))

    async def _create_partitions(self, conn: AsyncConnection, days: list[date]) -> None:
        async def work() -> None:
            for day in days:
                cur = await conn.execute(_ENSURE_PARTITION, (self.table.history, day))
                created = await cur.fetchone()
                if created is not None and created[0]:
                    metrics.PARTITIONS_CREATED_ON_DEMAND.labels(self.table.stream.value).inc()
                    log.warning(
                        "created missing partition of %s for %s (is maintenance running?)",
                        self.table.history,
                        day,
                    )

        await in_transaction(conn, work)

    async def store(self, conn: AsyncConnection, entries: Sequence[Entry[Row]]) -> WriteResult:
        """Store ``entries`` in one transaction on ``conn``; the module docstring gives the order.

        Safe to retry: a replayed batch inserts nothing twice and leaves live
        status unchanged. Raises :class:`SinkUnavailable`.
        """
        rejected: list[Rejected] = []
        while True:
            try:
                result = await in_transaction(conn, partial(self._store_once, conn, entries))
            except _Refused as refused:
                gone = {id(entry) for entry, _ in refused.entries}
                entries = [e for e in entries if id(e) not in gone]
                rejected += [Rejected(e[1], "database", why) for e, why in refused.entries]
                continue
            result.rejected = rejected
            return result

    async def _store_once(
        self, conn: AsyncConnection, entries: Sequence[Entry[Row]]
    ) -> WriteResult:
        rows = list(map(_value, entries))
        live = await self.registers.upsert_live(conn, rows)
        counted, late = await self.registers.count_new(conn, rows, live)
        staged = (
            entries
            if counted is rows
            else [(row, entry[1]) for row, entry in zip(counted, entries, strict=True)]
        )
        inserted, refused = await self._insert(conn, staged)
        if refused:
            by_row = {id(row): entry for row, entry in zip(counted, entries, strict=True)}
            raise _Refused([(by_row[id(e[0])], why) for e, why in refused])
        adjustments: list[Adjustment] = []
        inserted_late: list[tuple[str, datetime]] = []
        if late:
            new = {row_key(row) for row in inserted}
            inserted_late = [k for k in late if k in new]
            adjustments = await self.registers.recount(conn, inserted_late)
        await add_to_rollup(conn, self.table, inserted, adjustments)
        # Repeats within the batch and rows stored before were not inserted.
        result = WriteResult(len(inserted), len(entries) - len(inserted))
        if late or counted is not rows:
            stream = self.table.stream.value
            notes = Counter((stream, row[-1]) for row in inserted if row[-1] is not None)
            notes.update(noted(stream, adjustments))
            result.notes, result.late = dict(notes), len(inserted_late)
        return result

    async def _insert(
        self, conn: AsyncConnection, entries: Sequence[Entry[Row]]
    ) -> tuple[list[Row], list[tuple[Entry[Row], str]]]:
        """The rows really inserted, and the entries the database refused, with why."""
        if not entries:
            return [], []
        try:
            async with conn.transaction():
                return await self._copy_or_merge(conn, list(map(_value, entries))), []
        except INVALID_ROW_ERRORS as exc:
            if _is_missing_partition(exc):
                raise MissingPartition(describe(exc)) from exc
            if len(entries) == 1:
                return [], [(entries[0], describe(exc))]
            # Bisect: each half in its own savepoint, so one bad row costs
            # log2(batch) retries instead of the whole batch.
            mid = len(entries) // 2
            left, left_rej = await self._insert(conn, entries[:mid])
            right, right_rej = await self._insert(conn, entries[mid:])
            return left + right, left_rej + right_rej

    async def _copy_or_merge(self, conn: AsyncConnection, rows: list[Row]) -> list[Row]:
        try:
            async with conn.transaction():
                await self._copy_rows(conn, self._copy, rows)
        except errors.UniqueViolation:
            pass
        else:
            return rows
        # Some rows are stored already (a replay or a device retry), or a row
        # repeats within the batch: stage the first occurrences and keep only
        # what is new.
        await conn.execute(self._create_staging)
        await self._copy_rows(conn, self._copy_staging, first_occurrences(rows))
        cur = await conn.execute(self._merge)
        inserted: list[Row] = await cur.fetchall()
        await conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(self.table.staging)))
        return inserted

    async def _copy_rows(
        self, conn: AsyncConnection, statement: sql.Composed, rows: list[Row]
    ) -> None:
        async with conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(self.table.copy_types)
            for row in rows:
                await copy.write_row(row)


async def add_to_rollup(
    conn: AsyncConnection,
    table: ReadingTable,
    inserted: Sequence[Row],
    adjustments: Sequence[Adjustment] = (),
) -> None:
    """Add the inserted history rows, and recounted energies, to ``table``'s hourly rollup."""
    deltas = hourly_deltas(inserted, table.rollup_sums, adjustments)
    if not deltas:
        return
    # Sorted by key, so concurrent writers lock rollup rows in one order.
    deltas.sort(key=lambda row: (row[0], row[1]))
    columns = [list(col) for col in zip(*deltas, strict=True)]
    # Interval readings (most batches) carry no notes: the narrower statement.
    notes = any(columns[-2]) or any(columns[-1])
    await conn.execute(_ROLLUPS[table.stream, notes], columns if notes else columns[:-2])


def noted(stream: str, adjustments: Sequence[Adjustment]) -> Counter[tuple[str, str]]:
    """The notes recounted readings newly got, per (``stream``, note)."""
    return Counter((stream, a[-1]) for a in adjustments if a[-1] is not None)


#: The low half of an hour's bitmap of minutes: minutes 0 to 29.
_HALF = (1 << 30) - 1


def hourly_deltas(
    rows: Sequence[Row],
    sums: tuple[tuple[str, int], ...],
    adjustments: Sequence[Adjustment] = (),
) -> list[Row]:
    """Per (device, UTC hour): the hour, the number of rows, each summed value, the
    bitmap of the minutes with a row (bit i: minute i) as two halves (minutes 0
    to 29, then 30 to 59, see :meth:`ReadingTable.upsert_rollup`), and the resets and jumps
    among them (a history row ends with its register note); then ``adjustments``
    (recounted energies: the first sum, resets, jumps) added.
    """
    acc: dict[tuple[str, int], list[Any]] = {}
    summed = _values_at([index for _, index in sums])
    width = len(sums)
    minutes, resets, jumps = width + 1, width + 2, width + 3
    # Heartbeats of one minute share their timestamp: find each one's hour and
    # minute once.
    slots: dict[datetime, tuple[int, int]] = {}
    for row in rows:
        recorded_at = row[1]
        slot_of = slots.get(recorded_at)
        if slot_of is None:
            minute = int(recorded_at.timestamp()) // 60
            slot_of = slots[recorded_at] = (minute // 60, 1 << (minute % 60))
        hour, bit = slot_of
        key = (row[0], hour)
        values = summed(row)
        slot = acc.get(key)
        if slot is None:
            acc[key] = [1, *values, bit, 0, 0]
        else:
            slot[0] += 1
            for n in range(width):
                slot[n + 1] += values[n]
            slot[minutes] |= bit
    # Few rows carry a note: count them apart from the loop every row takes.
    for row in [row for row in rows if row[-1] is not None]:
        slot = acc[(row[0], slots[row[1]][0])]
        slot[resets] += row[-1] == Note.RESET
        slot[jumps] += row[-1] == Note.JUMP
    for device, at, kwh, reset, jump, _note in adjustments:
        key = (device, int(at.timestamp()) // 3600)  # the reading's hour
        slot = acc.get(key)
        if slot is None:
            slot = acc[key] = [0, *([0.0] * width), 0, 0, 0]
        slot[1] += kwh
        slot[resets] += reset
        slot[jumps] += jump
    hour_start: dict[int, datetime] = {}
    deltas: list[Row] = []
    for (device, hour), slot in acc.items():
        start = hour_start.get(hour)
        if start is None:
            start = hour_start[hour] = datetime.fromtimestamp(hour * 3600, UTC)
        bitmap = slot[minutes]
        deltas.append(
            (device, start, *slot[:minutes], bitmap & _HALF, bitmap >> 30, *slot[resets:])
        )
    return deltas


def _values_at(indexes: list[int]) -> Callable[[Row], tuple[Any, ...]]:
    """The values of a row at ``indexes``, always as a tuple (at C speed for two or more)."""
    if len(indexes) == 1:
        (index,) = indexes
        return lambda row: (row[index],)
    return operator.itemgetter(*indexes)


def _is_missing_partition(exc: Exception) -> bool:
    # PostgreSQL reports "no partition of relation ... found for row" as a
    # check violation without a constraint; a CHECK constraint names itself.
    return isinstance(exc, errors.CheckViolation) and exc.diag.constraint_name is None


def first_occurrences(rows: Sequence[Row]) -> list[Row]:
    """``rows`` less those whose (device, timestamp) came earlier in them (first wins)."""
    seen: set[tuple[str, datetime]] = set()
    unique: list[Row] = []
    for row in rows:
        key = row_key(row)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


class _Refused(Exception):
    """Rows the database refused: the transaction rolls back, the batch goes again without."""

    def __init__(self, entries: list[tuple[Entry[Row], str]]) -> None:
        super().__init__(f"{len(entries)} row(s) refused")
        self.entries = entries
