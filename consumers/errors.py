"""Errors of the consumer workers, each saying whether a retry can help."""

from __future__ import annotations

from typing import ClassVar


class ConsumerError(Exception):
    """Root of every consumer error."""

    retriable: ClassVar[bool] = False


class SinkUnavailable(ConsumerError):
    """PostgreSQL could not take the batch (down, restarting, timed out, conflict).

    Nothing of the batch was committed and its offsets stay uncommitted; the
    worker pauses and writes the same batch again.
    """

    retriable = True


class MissingPartition(SinkUnavailable):
    """A reading's day has no history partition (maintenance fell behind).

    Never poison: the sink creates the day's partition and writes the batch
    again; if that fails too, the batch is retried like any outage.
    """


class DeadLetterUnavailable(ConsumerError):
    """The dead-letter transaction did not complete; it was aborted, offsets stay uncommitted."""

    retriable = True


class DeadLetterFailed(ConsumerError):
    """The dead-letter producer is unusable (e.g. fenced); the worker exits to be restarted."""


class BatchAbandoned(ConsumerError):
    """The worker lost the batch's partitions (rebalance) before committing it.

    Nothing is committed for it; the new owner reads the records again, and
    rows already stored are dropped there as duplicates.
    """
