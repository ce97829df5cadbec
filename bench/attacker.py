"""A broken-client attacker in a process of its own: held connections and hostile bodies.

:class:`AttackerProcess` runs, until stopped, against one server on 127.0.0.1:

- held connections, each reopened at once when the server closes it (as a
  slowloris attacker keeps its count): ``idle`` ones that send nothing,
  ``headers`` ones that send half a request head, ``body`` ones that send a
  whole head (a 1 KB ``Content-Length`` to ``/v1/ingest``) and then one body
  byte a second;
- hostile bodies, a number of them in flight at once, in a loop
  (:func:`hostile_bodies`).

It notes when the server closed each held connection, how old it was, and
whether a 408 came first; and each hostile body's statuses and the size of
its largest answer. Held connections are judged against the server's
deadlines given in the :class:`Plan`. Running it in its own process keeps its
work off the event loop of whoever measures latency next to it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from bench.gateway_memory import BODY_BYTES, MAX_EVENT_BYTES, empty_objects

HELD_KINDS = ("idle", "headers", "body")
DRIBBLE_LENGTH = 1024
HALF_HEAD = b"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: applic"
ANSWER_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What the attacker does, and the server's deadlines (seconds) to judge held connections."""

    port: int
    api_key: str
    #: Connections held per kind of :data:`HELD_KINDS`.
    held: dict[str, int]
    #: Hostile bodies in flight at once.
    hostile: int
    deadlines_s: dict[str, float]
    #: A held connection open longer than its deadline and this is late (the server's
    #: timers fire late by as long as its event loop is held).
    grace_s: float
    #: The attacker stops on its own this long after it started.
    lifetime_s: float


@dataclass(frozen=True, slots=True)
class Hostile:
    """One hostile body, where it goes, and the statuses it may get (503: shed by the bounds)."""

    name: str
    path: str
    body: bytes
    expected: frozenset[int]


def hostile_bodies() -> list[Hostile]:
    """The hostile bodies, each within the gateway's 5 MB body limit.

    - ``unknown-keys-batch``: a batch of events each just under the 64 KB
      event limit, so each is parsed and validated, each with 5,771 unknown
      keys (82 events): the costliest valid-looking input; 422;
    - ``unknown-keys-single``: one event of 380,000 unknown keys (4.2 MB) to
      ``/v1/ingest``; 413 (over the event limit);
    - ``empty-objects``: ``[{},{},...]``; 413 (over 10,000 events);
    - ``deep-nesting``: a batch of 82 arrays nested 31,744 deep; 422.
    """
    now = datetime.now(UTC).isoformat(timespec="seconds").encode()

    def unknown_keys(count: int) -> bytes:
        keys = b",".join(b'"%06d":0' % n for n in range(count))
        head = b'{"meterId":"M1","kwhConsumedAc":0.2,"voltage":230,"timestamp":"%s",' % now
        return head + keys + b"}"

    event = unknown_keys((MAX_EVENT_BYTES - 2048) // 11)
    keyed = b"[" + b",".join([event] * (BODY_BYTES // (len(event) + 1))) + b"]"
    depth = (MAX_EVENT_BYTES - 2048) // 2
    nested = b"[" * depth + b"]" * depth
    deep = b"[" + b",".join([nested] * (BODY_BYTES // (len(nested) + 1))) + b"]"
    refused = frozenset({413, 503})
    invalid = frozenset({422, 503})
    return [
        Hostile("unknown-keys-batch", "/v1/ingest/batch", keyed, invalid),
        Hostile("unknown-keys-single", "/v1/ingest", unknown_keys(380_000), refused),
        Hostile("empty-objects", "/v1/ingest/batch", empty_objects(BODY_BYTES), refused),
        Hostile("deep-nesting", "/v1/ingest/batch", deep, invalid),
    ]


class Answer(asyncio.Protocol):
    """Everything the server sent on one connection; :attr:`closed` is done once it ended.

    A plain protocol rather than a stream: a server that answers early and
    closes while the body is still being sent makes the kernel reset the
    connection, and a stream reader then raises instead of giving back the
    answer it already holds.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def status(self) -> int:
        """The answer's status (0: none came)."""
        parts = bytes(self.data[:16]).split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0

    def body_bytes(self) -> int:
        """The size of the answer's body."""
        head_end = self.data.find(b"\r\n\r\n")
        return len(self.data) - head_end - 4 if head_end >= 0 else 0


async def connect(port: int) -> tuple[asyncio.Transport, Answer]:
    """A new connection to 127.0.0.1:``port``. Raises ``OSError`` when refused."""
    loop = asyncio.get_running_loop()
    transport, answer = await loop.create_connection(Answer, "127.0.0.1", port)
    return transport, answer


@dataclass(slots=True)
class HeldTally:
    """The connections of one held kind: opened, closed by the server and when, still open."""

    deadline_s: float
    grace_s: float
    opened: int = 0
    connect_errors: int = 0
    answered_408: int = 0
    close_ages: list[float] = field(default_factory=list)
    open_since: dict[int, float] = field(default_factory=dict)

    def summary(self, phase_started: float) -> dict[str, Any]:
        """Figures at the end of the phase that began at ``phase_started`` (monotonic).

        ``most_late_s``: the longest the server took past its deadline to close
        one; ``closed_late`` and ``open_past_deadline``: connections the server
        closed, or left open, past its deadline and the grace; ``open_whole_phase``:
        those open since before the phase began.
        """
        now = time.monotonic()
        late = self.deadline_s + self.grace_s
        return {
            "opened": self.opened,
            "closed_by_server": len(self.close_ages),
            "answered_408": self.answered_408,
            "close_age_s": {
                "min": round(min(self.close_ages, default=0.0), 2),
                "max": round(max(self.close_ages, default=0.0), 2),
            },
            "most_late_s": round(
                max(self.close_ages, default=self.deadline_s) - self.deadline_s, 2
            ),
            "closed_late": sum(age > late for age in self.close_ages),
            "open_at_end": len(self.open_since),
            "open_whole_phase": sum(t <= phase_started for t in self.open_since.values()),
            "open_past_deadline": sum(now - t > late for t in self.open_since.values()),
            "connect_errors": self.connect_errors,
        }


async def hold(kind: str, plan: Plan, tally: HeldTally, all_open: asyncio.Barrier) -> None:
    """Keep one connection of ``kind`` open, reopening it each time the server closes it.

    The first ``plan.held[kind]`` connections of the kind wait at ``all_open``
    once open (and their head sent), so that the phase starts with all held.
    """
    head = (
        f"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {plan.api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {DRIBBLE_LENGTH}\r\n\r\n"
    ).encode()
    while True:
        try:
            transport, answer = await connect(plan.port)
        except OSError:
            tally.connect_errors += 1
            await asyncio.sleep(0.1)
            continue
        opened = time.monotonic()
        tally.opened += 1
        tally.open_since[id(answer)] = opened
        try:
            if kind != "idle":
                transport.write(HALF_HEAD if kind == "headers" else head)
            if tally.opened <= plan.held[kind]:
                await all_open.wait()
            while kind == "body" and not answer.closed.done():
                await asyncio.wait([answer.closed], timeout=1.0)
                if not answer.closed.done():
                    transport.write(b" ")  # one more byte of the body, never all of it
            await answer.closed
        finally:
            del tally.open_since[id(answer)]
            transport.close()
        # Reached only when the server ended the connection (cancellation skips it).
        tally.close_ages.append(time.monotonic() - opened)
        tally.answered_408 += answer.status() == 408


@dataclass(slots=True)
class HostileTally:
    """The answers to one hostile body."""

    statuses: Counter[int] = field(default_factory=Counter)
    largest_answer: int = 0
    slowest_s: float = 0.0

    def summary(self, hostile: Hostile) -> dict[str, Any]:
        """Statuses (0: no answer), the largest answer body, the slowest answer, surprises."""
        return {
            "bytes": len(hostile.body),
            "statuses": dict(sorted(self.statuses.items())),
            "largest_answer_bytes": self.largest_answer,
            "slowest_s": round(self.slowest_s, 2),
            "unexpected": sum(n for s, n in self.statuses.items() if s not in hostile.expected),
        }


async def post_hostile(port: int, api_key: str, hostile: Hostile, tally: HostileTally) -> None:
    """Send ``hostile`` on a connection of its own; count its status and the answer's size.

    The body is handed to the transport whole, and the answer awaited while
    it goes out: the gateway may answer (413, 503) before reading it, and close.
    """
    started = time.monotonic()
    head = (
        f"POST {hostile.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(hostile.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    transport, answer = await connect(port)
    try:
        transport.writelines([head, hostile.body])
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            await answer.closed
    finally:
        transport.close()
    tally.statuses[answer.status()] += 1
    tally.largest_answer = max(tally.largest_answer, answer.body_bytes())
    tally.slowest_s = max(tally.slowest_s, time.monotonic() - started)


async def hostile_loop(
    first: int, plan: Plan, bodies: list[Hostile], tallies: dict[str, HostileTally]
) -> None:
    """Post the hostile bodies in turn, starting at ``first``, one at a time, forever."""
    for number in range(first, 10**9):
        hostile = bodies[number % len(bodies)]
        try:
            await post_hostile(plan.port, plan.api_key, hostile, tallies[hostile.name])
        except OSError:  # refused, reset, or no answer in time (TimeoutError)
            tallies[hostile.name].statuses[0] += 1
            await asyncio.sleep(0.1)


async def attack(plan: Plan, pipe: Connection, stop: Event) -> dict[str, Any]:
    """Hold every connection once, say so on ``pipe``, then attack until ``stop``; the figures."""
    bodies = hostile_bodies()
    held = {kind: HeldTally(plan.deadlines_s[kind], plan.grace_s) for kind in HELD_KINDS}
    hostile = {body.name: HostileTally() for body in bodies}
    all_open = asyncio.Barrier(sum(plan.held.values()) + 1)
    tasks = [
        asyncio.create_task(hold(kind, plan, held[kind], all_open))
        for kind in HELD_KINDS
        for _ in range(plan.held[kind])
    ]
    tasks += [
        asyncio.create_task(hostile_loop(i, plan, bodies, hostile)) for i in range(plan.hostile)
    ]
    try:
        await all_open.wait()
        started = time.monotonic()
        pipe.send({"ready": True})
        await asyncio.to_thread(stop.wait, plan.lifetime_s)
        return {
            "held": {kind: tally.summary(started) for kind, tally in held.items()},
            "hostile": {body.name: hostile[body.name].summary(body) for body in bodies},
        }
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _attacker_main(plan: Plan, pipe: Connection, stop: Event) -> None:
    """The attacker process: runs :func:`attack` and sends its figures (or its failure) back."""
    # Ctrl-C is the parent's to handle: it sets ``stop`` and then ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pipe.send(asyncio.run(attack(plan, pipe, stop)))
    except Exception as exc:  # noqa: BLE001 -- reported to the parent, which fails the run
        pipe.send({"error": repr(exc)})
    finally:
        pipe.close()


class AttackerProcess:
    """The attack of a :class:`Plan`, in a process of its own, from entering the block to finish.

    Entering returns once every held connection was opened. Leaving the block
    stops the process (killing it if it does not stop in time), also on errors.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        context = multiprocessing.get_context("spawn")
        self._pipe, theirs = context.Pipe()
        self._stop = context.Event()
        self._process = context.Process(
            target=_attacker_main, args=(plan, theirs, self._stop), daemon=True
        )
        self._theirs = theirs

    @property
    def pid(self) -> int:
        """The attacker's process id."""
        pid = self._process.pid
        if pid is None:
            raise RuntimeError("the attacker is not started")
        return pid

    def _receive(self, timeout_s: float, missing: str) -> dict[str, Any]:
        if not self._pipe.poll(timeout_s):
            raise RuntimeError(missing)
        message: dict[str, Any] = self._pipe.recv()
        if "error" in message:
            raise RuntimeError(f"the attacker failed: {message['error']}")
        return message

    def __enter__(self) -> AttackerProcess:
        self._process.start()
        self._theirs.close()
        try:
            self._receive(self.plan.lifetime_s, "the attacker never had its connections open")
        except BaseException:
            self._end()
            raise
        return self

    def finish(self) -> dict[str, Any]:
        """Stop the attack; its figures (``held`` and ``hostile`` summaries)."""
        self._stop.set()
        return self._receive(ANSWER_TIMEOUT_S, "the attacker sent no figures")

    def _end(self) -> None:
        self._stop.set()
        self._process.join(timeout=15)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._pipe.close()

    def __exit__(self, *exc_info: object) -> None:
        self._end()
