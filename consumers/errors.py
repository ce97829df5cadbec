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


class DeadLetterUnavailable(ConsumerError):
    """Kafka did not acknowledge a dead-letter record; offsets stay uncommitted."""

    retriable = True
