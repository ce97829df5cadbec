"""``python -m consumers meter|vehicle|links|migrate``: run one stream's worker, or migrate.

A worker runs until SIGTERM or SIGINT; then it finishes the batch in hand,
commits it, commits its offsets, leaves the consumer group and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import start_http_server

from consumers.connection import WriterConnection
from consumers.dlq import DeadLetterPublisher
from consumers.migrate import apply_migrations
from consumers.settings import ConsumerSettings
from consumers.worker import CommitBeforeRevoke, StreamWorker
from schemas import Stream

log = logging.getLogger("consumers")


async def run_worker(settings: ConsumerSettings, stream: Stream, stop: asyncio.Event) -> None:
    """Run ``stream``'s worker until ``stop`` is set. Owns its consumer, producer and connection."""
    topic = settings.topics().for_stream(stream)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.group_id_prefix}-{stream.value}",
        client_id=f"energy-consumer-{stream.value}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.batch_max_records,
        fetch_max_wait_ms=settings.batch_max_wait_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"energy-consumer-{stream.value}-dlq",
        acks="all",
        enable_idempotence=True,
    )
    await _start_kafka(settings, consumer, producer, stop)
    try:
        async with WriterConnection(settings.database_url.get_secret_value()) as db:
            worker = StreamWorker(
                settings, stream, consumer, db, DeadLetterPublisher(producer), stop
            )
            consumer.subscribe([topic], listener=CommitBeforeRevoke(worker))
            log.info(
                "consuming %s as group %s", topic, f"{settings.group_id_prefix}-{stream.value}"
            )
            await worker.run()
    finally:
        await consumer.stop()
        await producer.stop()
    log.info("stopped cleanly")


async def _start_kafka(
    settings: ConsumerSettings,
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    stop: asyncio.Event,
) -> None:
    """Start both Kafka clients, waiting (with back-off) while the broker is unreachable."""
    delay = settings.retry_initial_s
    while True:
        try:
            await consumer.start()
            await producer.start()
        except KafkaError as exc:
            await consumer.stop()
            await producer.stop()
            if stop.is_set():
                raise
            log.warning(
                "Kafka unreachable at %s, retrying in %.1fs: %r",
                settings.kafka_bootstrap_servers,
                delay,
                exc,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.retry_max_s)
        else:
            return


async def _main_async(settings: ConsumerSettings, stream: Stream) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_worker(settings, stream, stop)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``energy-consumer`` / ``python -m consumers``."""
    parser = argparse.ArgumentParser(prog="python -m consumers", description=__doc__)
    parser.add_argument("command", choices=[*(s.value for s in Stream), "migrate"])
    args = parser.parse_args(argv)
    settings = ConsumerSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "migrate":
        applied = apply_migrations(settings.database_url.get_secret_value())
        print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
        return 0
    stream = Stream(args.command)
    server, thread = start_http_server(settings.metrics_port, addr=settings.metrics_host)
    try:
        asyncio.run(_main_async(settings, stream))
    finally:
        server.shutdown()
        thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
