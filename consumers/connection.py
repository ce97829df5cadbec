"""The worker's one PostgreSQL connection, reopened after any failure, and its transactions.

A worker writes one transaction at a time, so it holds a single connection
rather than a pool; this module owns it, its reconnects, and the line between
"this data is invalid" (the sinks' business) and "not now" (:class:`SinkUnavailable`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict

from consumers.errors import SinkUnavailable

T = TypeVar("T")


async def in_transaction(conn: AsyncConnection, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on ``conn``, translating "not now" failures.

    Raises :class:`SinkUnavailable` for anything but a committed transaction;
    ``work`` decides what is invalid data and handles it itself (savepoints).
    """
    try:
        async with conn.transaction():
            return await work()
    except psycopg.Error as exc:
        # Invalid rows are isolated inside ``work``; whatever reaches here is
        # the server or the connection failing (or a missing migration), which
        # a later retry can fix. Never dead-letter data for it.
        raise SinkUnavailable(f"{type(exc).__name__}: {exc}".strip()) from exc


class WriterConnection:
    """Lazily opened, health-checked connection; use ``async with``.

    The session cancels a statement after ``statement_timeout_s`` and a lock
    wait after ``lock_timeout_s``, and TCP keepalives plus a user timeout
    notice a server or network that went silent: every way of hanging ends
    in an error, which the worker retries.
    """

    def __init__(
        self,
        conninfo: str,
        connect_timeout_s: float = 5.0,
        statement_timeout_s: float = 60.0,
        lock_timeout_s: float = 30.0,
    ) -> None:
        self._conninfo = conninfo
        self._connect_timeout_s = connect_timeout_s
        # Added to whatever ``options`` the URL carries, not in place of them.
        given = conninfo_to_dict(conninfo).get("options") or ""
        self._options = (
            f"{given} -c statement_timeout={int(statement_timeout_s * 1000)}"
            f" -c lock_timeout={int(lock_timeout_s * 1000)}"
        ).strip()
        self._conn: AsyncConnection | None = None

    async def get(self) -> AsyncConnection:
        """An open connection; raises :class:`SinkUnavailable` when none can be made."""
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        await self.discard()
        try:
            self._conn = await AsyncConnection.connect(
                self._conninfo,
                connect_timeout=max(1, int(self._connect_timeout_s)),
                application_name="energy-consumer",
                options=self._options,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                tcp_user_timeout=30_000,
            )
        except psycopg.Error as exc:
            raise SinkUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        return self._conn

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``work`` on the open connection; after a failure the connection is replaced.

        Raises :class:`SinkUnavailable` (when no connection can be made, or
        from ``work``); the next call reconnects.
        """
        conn = await self.get()
        try:
            return await work(conn)
        except SinkUnavailable:
            await self.discard()
            raise

    async def discard(self) -> None:
        """Close the current connection (after a failure); the next ``get`` reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            # It was already failing; we are replacing it anyway.
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def __aenter__(self) -> WriterConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.discard()
