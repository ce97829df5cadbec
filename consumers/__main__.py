"""``python -m consumers meter|vehicle|links|migrate|maintain``.

``meter``, ``vehicle``, ``links`` run one stream's worker until SIGTERM or
SIGINT; then it finishes the batch in hand, commits it, commits its offsets,
leaves the consumer group and exits 0. ``migrate`` applies the schema
migrations. ``maintain`` runs partition maintenance once, or with ``--every
SECONDS`` as a service (one per database) until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from consumers import metrics
from consumers.connection import WriterConnection
from consumers.dlq import DeadLetterPublisher
from consumers.dlq_age import dead_letter_age_probe
from consumers.health import Health, serve_health
from consumers.membership import group_membership, membership_options
from consumers.migrate import prepare_database
from consumers.partitions import run_maintenance
from consumers.settings import ConsumerSettings
from consumers.worker import CommitBeforeRevoke, StreamWorker, sink_for
from schemas import Stream

log = logging.getLogger("consumers")


async def run_worker(
    settings: ConsumerSettings, stream: Stream, stop: asyncio.Event, health: Health | None = None
) -> None:
    """Run ``stream``'s worker until ``stop`` is set. Owns its consumer, producer and connection.

    ``health`` (``/readyz``) is told where the worker stands in its consumer group.
    """
    topic = settings.topics().for_stream(stream)
    group_id = f"{settings.group_id_prefix}-{stream.value}"
    health = health or Health(
        settings.database_url.get_secret_value(), settings.readiness_timeout_s, "connecting"
    )
    clients = await _connect_kafka(settings, stream, group_id, stop)
    if clients is None:
        log.info("stopped before Kafka was reachable")
        return
    consumer, producer = clients
    try:
        async with WriterConnection(
            settings.database_url.get_secret_value(),
            statement_timeout_s=settings.statement_timeout_s,
            lock_timeout_s=settings.lock_timeout_s,
        ) as db:
            worker = StreamWorker(
                settings,
                stream,
                consumer,
                sink_for(stream, db, settings.register_rules()),
                DeadLetterPublisher(producer, group_id),
                stop,
            )
            consumer.subscribe([topic], listener=CommitBeforeRevoke(worker, health.joined))
            health.joined(None)
            log.info("consuming %s as group %s", topic, group_id)
            await worker.run()
    finally:
        await consumer.stop()
        await producer.stop()
    log.info("stopped cleanly")


def _maintenance_service(settings: ConsumerSettings, every_s: float) -> None:
    """Partition maintenance now and every ``every_s`` until SIGTERM/SIGINT; failures retried."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    policy = settings.retention_policy()
    log.info(
        "partition maintenance every %.0f s: retention %d days, %d days ahead, "
        "at most %d drops per table and run",
        every_s,
        policy.retention_days,
        policy.ahead_days,
        policy.drops_per_run,
    )
    while not stop.is_set():
        try:
            run_maintenance(settings.database_url.get_secret_value(), policy)
        except Exception:
            metrics.MAINTENANCE_FAILURES.inc()
            log.exception("partition maintenance failed; will try again in %.0f s", every_s)
        stop.wait(every_s)
    log.info("stopped cleanly")


def _kafka_clients(
    settings: ConsumerSettings, stream: Stream, group_id: str
) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group_id,
        # Dead letters are written transactionally; never read aborted ones.
        isolation_level="read_committed",
        client_id=f"energy-consumer-{stream.value}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.batch_max_records,
        fetch_max_wait_ms=settings.batch_max_wait_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **membership_options(settings),
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"energy-consumer-{stream.value}-dlq",
        # One id per process: a restarted worker never inherits an open transaction.
        transactional_id=f"{group_id}-dlq-{uuid.uuid4().hex}",
        acks="all",
        enable_idempotence=True,
    )
    return consumer, producer


async def _connect_kafka(
    settings: ConsumerSettings, stream: Stream, group_id: str, stop: asyncio.Event
) -> tuple[AIOKafkaConsumer, AIOKafkaProducer] | None:
    """Started Kafka clients, waiting with back-off while the broker is unreachable.

    ``None`` if ``stop`` was set first. A client that failed to start cannot
    be started again, so every attempt builds new ones.
    """
    delay = settings.retry_initial_s
    while not stop.is_set():
        consumer, producer = _kafka_clients(settings, stream, group_id)
        try:
            await consumer.start()
            await producer.start()
        except KafkaError as exc:
            await consumer.stop()
            await producer.stop()
            log.warning(
                "Kafka unreachable at %s, retrying in %.1fs: %r",
                settings.kafka_bootstrap_servers,
                delay,
                exc,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, settings.retry_max_s)
        else:
            return consumer, producer
    return None


async def _main_async(settings: ConsumerSettings, stream: Stream, health: Health) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with (
        group_membership(settings, stream, stop),
        dead_letter_age_probe(settings, stream, stop),
    ):
        try:
            await run_worker(settings, stream, stop, health)
        finally:
            health.kafka = "stopped"


def _positive_seconds(text: str) -> float:
    seconds = float(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``energy-consumer`` / ``python -m consumers``."""
    parser = argparse.ArgumentParser(prog="python -m consumers", description=__doc__)
    parser.add_argument("command", choices=[*(s.value for s in Stream), "migrate", "maintain"])
    parser.add_argument(
        "--every",
        type=_positive_seconds,
        nargs="?",
        const=None,  # --every alone: CONSUMER_MAINTENANCE_INTERVAL_S
        default=argparse.SUPPRESS,  # no --every: maintain runs once
        metavar="SECONDS",
        help="maintain: run as a service, maintenance now and every SECONDS "
        "(default CONSUMER_MAINTENANCE_INTERVAL_S), with metrics",
    )
    args = parser.parse_args(argv)
    try:
        settings = ConsumerSettings()
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(map(str, error["loc"]))
            print(
                f"configuration error: {where + ': ' if where else ''}{error['msg']}",
                file=sys.stderr,
            )
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "migrate":
        # yoyo logs every step at INFO; the summary line below is what operators need.
        logging.getLogger("yoyo").setLevel(logging.WARNING)
        applied = prepare_database(
            settings.database_url.get_secret_value(),
            settings.retention_days,
            settings.partitions_ahead_days,
        )
        print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
        return 0
    if args.command == "maintain" and "every" not in args:
        report = run_maintenance(
            settings.database_url.get_secret_value(), settings.retention_policy()
        )
        print(
            f"partitions created {len(report.created)}, dropped {len(report.dropped)}"
            f" ({sum(d.rows for d in report.dropped)} rows), left past retention "
            f"{report.pending_drops}, rollup rows deleted {report.rollups_deleted}"
            + (" (skipped: another session holds the lock)" if report.skipped else "")
        )
        return 0
    health = Health(
        settings.database_url.get_secret_value(),
        settings.readiness_timeout_s,
        None if args.command == "maintain" else "connecting",
    )
    server, thread = serve_health(settings.metrics_host, settings.metrics_port, health)
    try:
        if args.command == "maintain":
            _maintenance_service(settings, args.every or settings.maintenance_interval_s)
        else:
            asyncio.run(_main_async(settings, Stream(args.command), health))
    finally:
        server.shutdown()
        thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
