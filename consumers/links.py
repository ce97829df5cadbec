"""Vehicle-to-meter links: each link event applied in its own savepoint of one transaction.

A link says which meter feeds a vehicle from ``validFrom`` (until ``validTo``,
or open-ended). A new link closes the vehicle's open link that began before
it, so re-linking a vehicle to another meter is one event, not two. Replays
change nothing; a link that contradicts a stored one is refused with a reason
and dead-lettered, while the rest of the batch is applied.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import AsyncConnection

from consumers.batch import Batch, Entry
from consumers.connection import WriterConnection, in_transaction
from consumers.sink import INVALID_ROW_ERRORS, Rejected, WriteResult, describe
from schemas import VehicleMeterLink

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

    def __init__(self, db: WriterConnection) -> None:
        self._db = db

    async def write(self, batch: Batch) -> WriteResult:
        """Apply the batch's links; see :meth:`store`."""
        return await self._db.run(lambda conn: self.store(conn, batch.links))

    async def store(
        self, conn: AsyncConnection, links: Sequence[Entry[VehicleMeterLink]]
    ) -> WriteResult:
        """Apply ``links`` in order, in one transaction. Idempotent: a replay changes nothing.

        A link that conflicts with the stored ones (another meter for the same
        start, an overlapping interval) is rejected with the database's reason.
        Raises :class:`SinkUnavailable`.
        """

        async def work() -> WriteResult:
            result = WriteResult()
            for link, source in links:
                try:
                    async with conn.transaction():
                        changed = await self._apply(conn, link)
                except INVALID_ROW_ERRORS as exc:
                    result.rejected.append(Rejected(source, "database", describe(exc)))
                    continue
                except _LinkConflict as exc:
                    result.rejected.append(Rejected(source, "conflict", str(exc)))
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
