"""A gateway of a benchmark's own: its topics in Kafka and its ``python -m ingest_gateway`` process.

Benchmarks start the gateway exactly as operators do (the module, with
``GATEWAY_*`` variables), on a free loopback port, with a random API key,
publishing to topics created for the run and deleted after it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import psutil

from bench.procstat import listener_pid, tree
from deploy.local.devstack import ready
from deploy.local.kafka_tools import create_topics, delete_topics
from deploy.local.prometheus_text import metric_value, scrape
from deploy.local.services import ROOT, free_port
from schemas import DEFAULT_PARTITIONS, TopicNames

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@contextlib.contextmanager
def kafka_topics(bootstrap: str, prefix: str) -> Iterator[TopicNames]:
    """Reading and link topics named ``<prefix>.*`` (12 partitions) for the block; then deleted."""
    topics = TopicNames(
        meter=f"{prefix}.telemetry.meter.v1",
        vehicle=f"{prefix}.telemetry.vehicle.v1",
        links=f"{prefix}.fleet.links.v1",
    )
    names = list(topics.all())
    create_topics(bootstrap, names, DEFAULT_PARTITIONS)
    try:
        yield topics
    finally:
        delete_topics(bootstrap, names)


class GatewayProcess:
    """``python -m ingest_gateway`` with ``workers`` processes; stopped on leaving the block.

    With ``profile``, runs under ``cProfile`` (one worker: uvicorn then serves
    in the main process) and writes the profile there on exit. ``extra_env``
    adds or overrides variables (e.g. ``GATEWAY_IDLE_TIMEOUT_S``).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: TopicNames,
        workers: int,
        profile: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
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
        self.env.update(extra_env or {})
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
        workers = [proc.pid for proc in tree(self.pid)[1:] if "spawn_main" in _cmdline(proc)]
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
                argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
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
        return metric_value(scrape(self.url + "/metrics"), "energy_gateway_events_accepted_total")


def _cmdline(process: psutil.Process) -> str:
    """The command line of ``process``, space-separated ("" once it is gone)."""
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""
