"""A gateway of a benchmark's own: its topics in Kafka and its ``python -m ingest_gateway`` process.

Benchmarks start the gateway exactly as operators do (the module, with
``GATEWAY_*`` variables), on a free loopback port, with a random API key,
publishing to topics created for the run and deleted after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.devstack import REPO_ROOT, ready
from bench.procstat import cmdline, descendants, listener_pid
from schemas import DEFAULT_PARTITIONS, TopicNames

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _admin(bootstrap: str, create: list[str], delete: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="energy-bench")
    await admin.start()
    try:
        if create:
            await admin.create_topics(
                [NewTopic(name, DEFAULT_PARTITIONS, 1) for name in create], timeout_ms=30_000
            )
        if delete:
            await admin.delete_topics(delete, timeout_ms=30_000)
    finally:
        await admin.close()


@contextlib.contextmanager
def kafka_topics(bootstrap: str, prefix: str) -> Iterator[TopicNames]:
    """Reading and link topics named ``<prefix>.*`` (12 partitions) for the block; then deleted."""
    topics = TopicNames(
        meter=f"{prefix}.telemetry.meter.v1",
        vehicle=f"{prefix}.telemetry.vehicle.v1",
        links=f"{prefix}.fleet.links.v1",
    )
    names = list(topics.all())
    asyncio.run(_admin(bootstrap, names, []))
    try:
        yield topics
    finally:
        asyncio.run(_admin(bootstrap, [], names))


class GatewayProcess:
    """``python -m ingest_gateway`` with ``workers`` processes; stopped on leaving the block.

    With ``profile``, runs under ``cProfile`` (one worker: uvicorn then serves
    in the main process) and writes the profile there on exit.
    """

    def __init__(
        self, bootstrap: str, topics: TopicNames, workers: int, profile: Path | None = None
    ) -> None:
        self.port = free_port()
        self.api_key = secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.profile = profile
        # The broker's process, when it runs on this machine: its CPU is part of the story.
        port = bootstrap.split(",")[0].rsplit(":", 1)[-1]
        self.kafka_pid = listener_pid(int(port)) if port.isdigit() else None
        self.env = dict(
            os.environ,
            GATEWAY_HOST="127.0.0.1",
            GATEWAY_PORT=str(self.port),
            GATEWAY_WORKERS=str(1 if profile else workers),
            GATEWAY_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            GATEWAY_API_KEYS=self.api_key,
            GATEWAY_METER_TOPIC=topics.meter,
            GATEWAY_VEHICLE_TOPIC=topics.vehicle,
            GATEWAY_LINKS_TOPIC=topics.links,
            GATEWAY_LOG_LEVEL="WARNING",
        )
        self.log = Path(tempfile.mkstemp(prefix="bench-gateway-", suffix=".log")[1])
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The uvicorn main process."""
        assert self._proc is not None, "not started"  # noqa: S101 -- a usage error
        return self._proc.pid

    def worker_pids(self) -> list[int]:
        """The processes that serve requests (the main one when there is one worker)."""
        # uvicorn starts its workers with multiprocessing's spawn; the other
        # child is multiprocessing's resource tracker.
        workers = [pid for pid in descendants(self.pid)[1:] if "spawn_main" in cmdline(pid)]
        return workers or [self.pid]

    def __enter__(self) -> GatewayProcess:
        argv = [sys.executable, "-m", "ingest_gateway"]
        if self.profile:
            argv = [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(self.profile),
                "-m",
                "ingest_gateway",
            ]
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        # Several workers share the socket; insist on a run of 200s so that
        # every worker's producer is (very likely) connected.
        streak = 0
        while streak < 10:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._stop()
                raise RuntimeError(f"gateway did not get ready; log:\n{self.log.read_text()}")
            streak = streak + 1 if ready(self.url + "/readyz") else 0
            time.sleep(0.1)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        self.log.unlink(missing_ok=True)

    def _stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        # SIGINT lets cProfile write its file; uvicorn treats it like SIGTERM.
        proc.send_signal(signal.SIGINT if self.profile else signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def accepted_events(self) -> float:
        """``energy_gateway_events_accepted_total`` summed over streams (and workers)."""
        url = self.url + "/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 -- loopback
            text = response.read().decode()
        pattern = r"^energy_gateway_events_accepted_total\{[^}]*\} (\S+)$"
        return sum(float(v) for v in re.findall(pattern, text, flags=re.MULTILINE))
