"""PostgreSQL writers: history by COPY, live status by one multi-row upsert, links.

Each ``write`` is ONE transaction. Inside it:

1. rows repeated within the batch are dropped (first occurrence wins);
2. history gets a straight binary COPY (the fast path); if any row is already
   stored, a unique violation rolls back to a savepoint and the rows go through
   a staging table with ``ON CONFLICT DO NOTHING`` (the duplicate-tolerant path);
3. a row the database refuses as invalid is isolated by bisection inside
   savepoints and reported as rejected, while the rest of the batch is written;
4. the hourly rollups get the counts and sums of the rows actually inserted
   (a replayed row was not inserted, so it is never counted twice);
5. live status is upserted from the newest reading per device.

Transient failures (connection lost, server restarting, serialization or
deadlock, statement timeout) raise :class:`SinkUnavailable`: nothing was
committed and the same batch can be written again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import psycopg
from psycopg import AsyncConnection, errors, sql

from consumers.errors import SinkUnavailable
from consumers.tables import ReadingTable, Row, row_key
from schemas import VehicleMeterLink

T = TypeVar("T")

#: Errors meaning "this row can never be stored", as opposed to "not now".
_INVALID_ROW_ERRORS = (errors.DataError, errors.IntegrityError)


@dataclass(slots=True)
class Rejected:
    """A row the database refused as invalid: its position in the batch and why."""

    index: int
    error_class: str
    reason: str


@dataclass(slots=True)
class WriteResult:
    """What one committed transaction did."""

    inserted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)


async def in_transaction(conn: AsyncConnection, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction, translating "not now" failures.

    Raises :class:`SinkUnavailable` for anything but a committed transaction;
    ``work`` decides what is invalid data and handles it itself.
    """
    try:
        async with conn.transaction():
            return await work()
    except psycopg.Error as exc:
        # Invalid rows are isolated inside ``work``; whatever reaches here is
        # the server or the connection failing (or a missing migration), which
        # a later retry can fix. Never dead-letter data for it.
        raise SinkUnavailable(f"{type(exc).__name__}: {exc}".strip()) from exc


class ReadingSink:
    """Writes batches of one reading stream into its history and live tables."""

    def __init__(self, table: ReadingTable) -> None:
        self.table = table
        self._copy = table.copy_history()
        self._copy_staging = table.copy_history(table.staging)
        self._create_staging = table.create_staging()
        self._merge = table.merge_staging()
        self._upsert = table.upsert_live()
        self._rollup = table.upsert_rollup()

    async def write(self, conn: AsyncConnection, rows: Sequence[Row]) -> WriteResult:
        """Store ``rows`` in one transaction; see the module docstring for the order.

        Safe to retry: a replayed batch inserts nothing twice and leaves live
        status unchanged. Raises :class:`SinkUnavailable`.
        """

        async def work() -> WriteResult:
            unique, duplicates = _first_occurrences(rows)
            inserted, rejected = await self._insert(conn, [rows[i] for i in unique], unique)
            refused = {r.index for r in rejected}
            await self._add_to_rollup(conn, inserted)
            await self._upsert_live(conn, [rows[i] for i in unique if i not in refused])
            duplicates += len(unique) - len(inserted) - len(refused)
            return WriteResult(len(inserted), duplicates, rejected)

        return await in_transaction(conn, work)

    async def _insert(
        self, conn: AsyncConnection, rows: list[Row], indexes: list[int]
    ) -> tuple[list[Row], list[Rejected]]:
        """The rows really inserted, and those the database refused."""
        if not rows:
            return [], []
        try:
            async with conn.transaction():
                return await self._copy_or_merge(conn, rows), []
        except _INVALID_ROW_ERRORS as exc:
            if len(rows) == 1:
                return [], [Rejected(indexes[0], "database", _describe(exc))]
            # Bisect: each half in its own savepoint, so one bad row costs
            # log2(batch) retries instead of the whole batch.
            mid = len(rows) // 2
            left, left_rej = await self._insert(conn, rows[:mid], indexes[:mid])
            right, right_rej = await self._insert(conn, rows[mid:], indexes[mid:])
            return left + right, left_rej + right_rej

    async def _copy_or_merge(self, conn: AsyncConnection, rows: list[Row]) -> list[Row]:
        try:
            async with conn.transaction():
                await self._copy_rows(conn, self._copy, rows)
        except errors.UniqueViolation:
            pass
        else:
            return rows
        # Some rows are stored already (a replay or a device retry): stage
        # everything and keep only what is new.
        await conn.execute(self._create_staging)
        await self._copy_rows(conn, self._copy_staging, rows)
        cur = await conn.execute(self._merge)
        inserted: list[Row] = await cur.fetchall()
        await conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(self.table.staging)))
        return inserted

    async def _add_to_rollup(self, conn: AsyncConnection, inserted: list[Row]) -> None:
        deltas = hourly_deltas(inserted, self.table.rollup_sums)
        if not deltas:
            return
        # Sorted by key, so concurrent writers lock rollup rows in one order.
        deltas.sort(key=lambda row: (row[0], row[1]))
        columns = [list(col) for col in zip(*deltas, strict=True)]
        await conn.execute(self._rollup, columns)

    async def _copy_rows(
        self, conn: AsyncConnection, statement: sql.Composed, rows: list[Row]
    ) -> None:
        async with conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(self.table.copy_types)
            for row in rows:
                await copy.write_row(row)

    async def _upsert_live(self, conn: AsyncConnection, rows: list[Row]) -> None:
        newest = coalesce_latest(rows)
        if not newest:
            return
        # Sorted by device id, so concurrent writers lock rows in one order.
        newest.sort(key=lambda row: row[0])
        columns = [list(col) for col in zip(*newest, strict=True)]
        await conn.execute(self._upsert, columns)


def hourly_deltas(rows: Sequence[Row], sums: tuple[tuple[str, int], ...]) -> list[Row]:
    """Per (device, UTC hour): the hour, the number of rows, and each summed value."""
    acc: dict[tuple[str, int], list[float]] = {}
    indexes = [index for _, index in sums]
    for row in rows:
        key = (row[0], int(row[1].timestamp()) // 3600)
        slot = acc.get(key)
        if slot is None:
            acc[key] = [1, *(row[i] for i in indexes)]
        else:
            slot[0] += 1
            for n, i in enumerate(indexes, start=1):
                slot[n] += row[i]
    return [
        (device, datetime.fromtimestamp(hour * 3600, UTC), int(slot[0]), *slot[1:])
        for (device, hour), slot in acc.items()
    ]


def coalesce_latest(rows: Sequence[Row]) -> list[Row]:
    """The newest row per device (by device timestamp; the first on a tie)."""
    latest: dict[str, Row] = {}
    for row in rows:
        current = latest.get(row[0])
        if current is None or row[1] > current[1]:
            latest[row[0]] = row
    return list(latest.values())


def _first_occurrences(rows: Sequence[Row]) -> tuple[list[int], int]:
    # The common case, no repeats, is decided at C speed.
    if len(dict.fromkeys(map(row_key, rows))) == len(rows):
        return list(range(len(rows))), 0
    seen: set[object] = set()
    unique: list[int] = []
    for i, row in enumerate(rows):
        key = row_key(row)
        if key not in seen:
            seen.add(key)
            unique.append(i)
    return unique, len(rows) - len(unique)


def _describe(exc: psycopg.Error) -> str:
    diag = exc.diag
    detail = diag.message_primary or str(exc)
    if diag.constraint_name:
        detail += f" (constraint {diag.constraint_name})"
    return detail


# Links ---------------------------------------------------------------------

_FIND_LINK = (
    "SELECT meter_id, valid_to FROM vehicle_meter_links WHERE vehicle_id = %s AND valid_from = %s"
)
_SET_LINK_END = (
    "UPDATE vehicle_meter_links SET valid_to = %s WHERE vehicle_id = %s AND valid_from = %s"
)
# A new link closes the vehicle's open link that began before it: re-linking a
# vehicle to another meter is one event, not two.
_CLOSE_OPEN_LINK = (
    "UPDATE vehicle_meter_links SET valid_to = %s "
    "WHERE vehicle_id = %s AND valid_to IS NULL AND valid_from < %s"
)
_INSERT_LINK = (
    "INSERT INTO vehicle_meter_links (vehicle_id, meter_id, valid_from, valid_to) "
    "VALUES (%s, %s, %s, %s)"
)


class LinkSink:
    """Applies vehicle-to-meter link events, each in its own savepoint of one transaction."""

    async def write(self, conn: AsyncConnection, links: Sequence[VehicleMeterLink]) -> WriteResult:
        """Apply ``links`` in order. Idempotent: a replayed link changes nothing.

        A link that conflicts with the stored ones (another meter for the same
        start, an overlapping interval) is rejected with the database's reason.
        Raises :class:`SinkUnavailable`.
        """

        async def work() -> WriteResult:
            result = WriteResult()
            for index, link in enumerate(links):
                try:
                    async with conn.transaction():
                        changed = await self._apply(conn, link)
                except _INVALID_ROW_ERRORS as exc:
                    result.rejected.append(Rejected(index, "database", _describe(exc)))
                    continue
                except _LinkConflict as exc:
                    result.rejected.append(Rejected(index, "conflict", str(exc)))
                    continue
                if changed:
                    result.inserted += 1
                else:
                    result.duplicates += 1
            return result

        return await in_transaction(conn, work)

    async def _apply(self, conn: AsyncConnection, link: VehicleMeterLink) -> bool:
        cur = await conn.execute(_FIND_LINK, (link.vehicle_id, link.valid_from))
        found = await cur.fetchone()
        if found is not None:
            meter_id, valid_to = found
            if meter_id != link.meter_id:
                raise _LinkConflict(
                    f"vehicle {link.vehicle_id} is already linked to meter {meter_id} "
                    f"from {link.valid_from.isoformat()}"
                )
            # An open-ended replay never reopens a closed link; an explicit end moves it.
            if link.valid_to is None or link.valid_to == valid_to:
                return False
            await conn.execute(_SET_LINK_END, (link.valid_to, link.vehicle_id, link.valid_from))
            return True
        await conn.execute(_CLOSE_OPEN_LINK, (link.valid_from, link.vehicle_id, link.valid_from))
        await conn.execute(
            _INSERT_LINK, (link.vehicle_id, link.meter_id, link.valid_from, link.valid_to)
        )
        return True


class _LinkConflict(Exception):
    """A link that contradicts a stored one; dead-lettered, never retried."""
