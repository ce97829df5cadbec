"""Consumer group membership: how fast a dead worker's partitions move, and what keeps it alive.

A worker killed with SIGKILL (or frozen) never leaves its group: the group
coordinator takes its partitions away only once its session times out, and
until then their records wait. So the session timeout bounds recovery after a
crash: ``CONSUMER_SESSION_TIMEOUT_MS`` (3 s by default, where aiokafka's own
default is 10 s), with a heartbeat every ``CONSUMER_HEARTBEAT_INTERVAL_MS``
(1 s). Brokers refuse sessions shorter than their
``group.min.session.timeout.ms`` (6 s unless set): the local stack and the
compose file set it to 1 s, and production brokers need it at or below
``CONSUMER_SESSION_TIMEOUT_MS``, or workers fail to join with
``InvalidSessionTimeoutError``.

A short session is safe only while heartbeats keep flowing. aiokafka sends
them from a task on the worker's event loop, so anything that holds the loop
for a whole session (a long synchronous decode, a blocking call, a long
garbage collection) costs the worker its membership and the group a
rebalance. A batch's decode is synchronous but short (a few microseconds per
record, tens of milliseconds for the 20,000 records of the largest batch);
PostgreSQL work is asynchronous, partition maintenance runs in a thread.
:func:`watch_event_loop` measures the loop's stalls
(``energy_consumer_event_loop_lag_seconds``) and logs any long enough to put
the membership at risk.

The rebalance timeout is set on its own (aiokafka would make it equal to the
session timeout): it is how long survivors of a rebalance may take to finish
the batch in hand (:class:`consumers.worker.CommitBeforeRevoke`) and rejoin.
A survivor slower than that is expelled and rejoins, starting another
rebalance, so it is generous (30 s). It does not delay a crash's recovery: a
dead member is dropped when its session expires.

Static membership (``group.instance.id``) was not chosen: it hands a restarted
worker its partitions back without a rebalance, but only to a worker restarted
under the same identity, and a member that stops cleanly then keeps its
partitions unread until its session expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiokafka.errors import InvalidSessionTimeoutError

from consumers import metrics
from consumers.settings import ConsumerSettings
from schemas import Stream

log = logging.getLogger(__name__)

#: How often the event loop watch ticks; a stall is measured past this.
WATCH_INTERVAL_S = 0.1


def membership_options(settings: ConsumerSettings) -> dict[str, int]:
    """The ``AIOKafkaConsumer`` keyword arguments of group membership, from ``settings``."""
    return {
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "rebalance_timeout_ms": settings.rebalance_timeout_ms,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
    }


@contextlib.asynccontextmanager
async def group_membership(
    settings: ConsumerSettings, stream: Stream, stop: asyncio.Event
) -> AsyncIterator[None]:
    """Around a worker's life: watch its event loop, and explain a refused session timeout.

    An ``InvalidSessionTimeoutError`` (the broker's bounds exclude
    ``CONSUMER_SESSION_TIMEOUT_MS``) is logged with the settings to change,
    then raised as it is: the worker cannot run until they agree.
    """
    watch = asyncio.create_task(watch_event_loop(settings, stream, stop))
    try:
        yield
    except InvalidSessionTimeoutError:
        log.critical(
            "the broker refused a session timeout of %d ms: set its "
            "group.min.session.timeout.ms at or below it (and group.max.session.timeout.ms "
            "at or above), or raise CONSUMER_SESSION_TIMEOUT_MS",
            settings.session_timeout_ms,
        )
        raise
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


async def watch_event_loop(settings: ConsumerSettings, stream: Stream, stop: asyncio.Event) -> None:
    """Measure how late the event loop runs a timer, until ``stop`` is set.

    Every stall is observed in ``energy_consumer_event_loop_lag_seconds``; one
    longer than a third of the session timeout (heartbeats delayed that long
    leave little margin before the coordinator expels the worker) is also
    logged as a warning. Never raises.
    """
    histogram = metrics.EVENT_LOOP_LAG.labels(stream.value)
    risky_s = settings.session_timeout_ms / 3000
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(WATCH_INTERVAL_S)
        lag = max(time.monotonic() - before - WATCH_INTERVAL_S, 0.0)
        histogram.observe(lag)
        if lag > risky_s:
            log.warning(
                "event loop stalled %.2f s (session timeout %.1f s): heartbeats were late",
                lag,
                settings.session_timeout_ms / 1000,
            )
