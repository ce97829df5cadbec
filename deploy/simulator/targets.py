"""Where the simulator sends: the gateway over HTTP, or Kafka directly.

Both deliver the same JSON bytes keyed by device id, retry what the other
side asks to be retried (HTTP 429/503 after ``Retry-After``, broken
connections, Kafka timeouts) and report every event that was not accepted;
nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from deploy.simulator.fleet import SimEvent
from deploy.simulator.http1 import Endpoint, Http1Connection, build_request
from schemas import DEFAULT_TOPICS, TopicNames

#: Statuses that mean "not now": wait ``Retry-After`` and send the same request again.
RETRY_STATUSES = frozenset({429, 503})
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 5.0


@dataclass(slots=True)
class Delivery:
    """How one send ended: what was acknowledged, what was refused and why."""

    accepted: list[SimEvent] = field(default_factory=list)
    rejected: list[SimEvent] = field(default_factory=list)
    retries: int = 0
    error: str | None = None


class Target(Protocol):
    """Something events can be delivered to, ``concurrency`` sends at a time."""

    concurrency: int

    async def deliver(self, events: Sequence[SimEvent]) -> Delivery:
        """Send ``events`` (readings, or links) until acknowledged or given up."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class HttpTarget:
    """The gateway: links one per ``POST /v1/links``, readings to ``/v1/ingest[/batch]``.

    One keep-alive connection per concurrent sender. A 4xx other than 429
    refuses the whole request (the gateway validates all or nothing).
    """

    def __init__(
        self, url: str, api_key: str, concurrency: int, max_retries: int, timeout_s: float = 30.0
    ) -> None:
        self.endpoint = Endpoint.parse(url)
        self.concurrency = concurrency
        self.max_retries = max_retries
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
        }
        self._idle: asyncio.Queue[Http1Connection] = asyncio.Queue()
        for _ in range(concurrency):
            self._idle.put_nowait(Http1Connection(self.endpoint, timeout_s))

    def request_for(self, events: Sequence[SimEvent]) -> bytes:
        """The request bytes that carry ``events`` (one link, one reading, or a batch)."""
        if len(events) == 1:
            path = "/v1/links" if "validFrom" in events[0].body else "/v1/ingest"
            body = orjson.dumps(events[0].body)
        else:
            path = "/v1/ingest/batch"
            body = orjson.dumps([e.body for e in events])
        return build_request(self.endpoint, "POST", path, body, self._headers)

    async def deliver(self, events: Sequence[SimEvent]) -> Delivery:
        """POST ``events``; retry 429/503 and connection failures up to ``max_retries``."""
        raw = self.request_for(events)
        outcome = Delivery()
        backoff = BACKOFF_INITIAL_S
        conn = await self._idle.get()
        try:
            while True:
                try:
                    response = await conn.send(raw)
                except (OSError, TimeoutError) as exc:
                    wait, why = backoff, f"{type(exc).__name__}: {exc}"
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                else:
                    if response.status == 202:
                        outcome.accepted = list(events)
                        return outcome
                    why = f"HTTP {response.status}: {response.body[:300].decode(errors='replace')}"
                    if response.status not in RETRY_STATUSES:
                        outcome.rejected, outcome.error = list(events), why
                        return outcome
                    wait = response.retry_after_s(default=1.0)
                if outcome.retries >= self.max_retries:
                    outcome.rejected = list(events)
                    outcome.error = f"gave up after {outcome.retries} retries: {why}"
                    return outcome
                outcome.retries += 1
                await asyncio.sleep(wait)
        finally:
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        """Close every idle connection."""
        while not self._idle.empty():
            self._idle.get_nowait().close()


class KafkaTarget:
    """Kafka directly, as a producer team would: acks=all, idempotent, keyed by device id."""

    def __init__(
        self,
        bootstrap_servers: str,
        concurrency: int,
        max_retries: int,
        topics: TopicNames = DEFAULT_TOPICS,
    ) -> None:
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.topics = topics
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id="energy-simulator",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=256 * 1024,
        )

    async def start(self) -> None:
        """Connect. Raises ``KafkaError`` when no broker answers."""
        await self._producer.start()

    def topic_of(self, event: SimEvent) -> str:
        """The topic an event belongs on."""
        body = event.body
        if "validFrom" in body:
            return self.topics.links
        return self.topics.meter if "meterId" in body else self.topics.vehicle

    async def deliver(self, events: Sequence[SimEvent]) -> Delivery:
        """Produce ``events`` and wait for every ack; re-send the ones that failed."""
        outcome = Delivery()
        pending = list(events)
        backoff = BACKOFF_INITIAL_S
        while True:
            failed: list[SimEvent] = []
            why = ""
            try:
                futures = [
                    await self._producer.send(
                        self.topic_of(e), value=orjson.dumps(e.body), key=e.device_id.encode()
                    )
                    for e in pending
                ]
            except KafkaError as exc:
                futures, failed, why = [], pending, repr(exc)
            results = await asyncio.gather(*futures, return_exceptions=True)
            for event, result in zip(pending, results, strict=False):
                if isinstance(result, BaseException):
                    failed.append(event)
                    why = repr(result)
                else:
                    outcome.accepted.append(event)
            if not failed:
                return outcome
            if outcome.retries >= self.max_retries:
                outcome.rejected, outcome.error = failed, f"gave up: {why}"
                return outcome
            outcome.retries += 1
            pending = failed
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def close(self) -> None:
        """Flush and disconnect."""
        await self._producer.stop()
