"""What a worker writes to: a sink, and what a sink reports.

A sink is chosen once, when the worker is built, and ``await sink.write(batch)``
is all the worker asks of it: ONE transaction, committed, or
:class:`~consumers.errors.SinkUnavailable` with nothing committed. Readings go
to :class:`consumers.readings.ReadingSink`, links to
:class:`consumers.links.LinkSink`. An event the database refuses as invalid
comes back as :class:`Rejected`, carrying the record it came from, so the
worker can dead-letter it while the rest of the batch is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg import errors

from consumers.batch import Batch

#: Errors meaning "this row can never be stored", as opposed to "not now".
INVALID_ROW_ERRORS = (errors.DataError, errors.IntegrityError)


@dataclass(slots=True)
class Rejected:
    """An event the database refused as invalid: the record it came from, and why."""

    source: Any
    error_class: str
    reason: str


@dataclass(slots=True)
class WriteResult:
    """What one committed transaction did."""

    inserted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    #: Link claims that became contested (see :mod:`consumers.links`).
    contested: int = 0
    #: Register readings counted with a note (reset, jump, replaced) when written or
    #: recounted, per (stream, note).
    notes: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Late readings inserted (counted again with the reading after each).
    late: int = 0


class Sink(Protocol):
    """Where a worker writes its batches."""

    async def write(self, batch: Batch) -> WriteResult:
        """Store ``batch`` in one committed transaction, or raise ``SinkUnavailable``.

        Safe to retry: a replayed batch changes nothing twice.
        """


def describe(exc: psycopg.Error) -> str:
    """The database's reason for refusing a row, for a dead letter's header."""
    diag = exc.diag
    detail = diag.message_primary or str(exc)
    if diag.constraint_name:
        detail += f" (constraint {diag.constraint_name})"
    return detail
