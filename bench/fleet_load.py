"""Per-vehicle latency through the analytics API, alone and while fleet queries run.

The API runs as operators run it (``python -m analytics_api``, one worker, the
default pool and limits) on a free loopback port. Requests go over HTTP/1.1
keep-alive connections, one per client thread: the sampler asks for
per-vehicle summaries one after another, while ``fleet_clients`` threads each
ask for the default fleet page again and again. Both phases run in the same
API process against the same data, so their ratio holds whatever the machine's
speed.
"""

from __future__ import annotations

import http.client
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.report import percentile, say
from deploy.local.devstack import ready
from deploy.local.services import ROOT, Database, free_port

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
FLEET_PATH = "/v1/analytics/fleet"


@dataclass(frozen=True)
class ApiProcess:
    """A running ``python -m analytics_api``: where it listens and the key it takes."""

    host: str
    port: int
    api_key: str


@contextmanager
def analytics_process(database: Database) -> Iterator[ApiProcess]:
    """The analytics API on ``database`` as the read-only role, ready; stopped after the block."""
    api = ApiProcess("127.0.0.1", free_port(), secrets.token_urlsafe(24))
    env = dict(
        os.environ,
        ANALYTICS_HOST=api.host,
        ANALYTICS_PORT=str(api.port),
        ANALYTICS_WORKERS="1",
        ANALYTICS_DATABASE_URL=database.reader_url,
        ANALYTICS_API_KEYS=api.api_key,
        ANALYTICS_LOG_LEVEL="WARNING",
    )
    log = Path(tempfile.mkstemp(prefix="bench-analytics-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "analytics_api"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready(f"http://{api.host}:{api.port}/readyz"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"analytics API did not get ready; log:\n{log.read_text()}")
            time.sleep(0.1)
        yield api
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)


class _Client:
    """One keep-alive HTTP/1.1 connection to the API."""

    def __init__(self, api: ApiProcess) -> None:
        self._conn = http.client.HTTPConnection(api.host, api.port, timeout=60)
        self._headers = {"Authorization": f"Bearer {api.api_key}"}

    def get(self, path: str) -> int:
        """The status of GET ``path`` (the body is read and dropped)."""
        self._conn.request("GET", path, headers=self._headers)
        response = self._conn.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True)
class VehicleLatency:
    """Per-vehicle summaries timed in one phase, and the fleet requests answered meanwhile."""

    ms: list[float]
    failed: int
    fleet_statuses: Counter[int]

    @property
    def p50(self) -> float:
        """Median, milliseconds."""
        return percentile(self.ms, 50)

    @property
    def p99(self) -> float:
        """99th percentile, milliseconds."""
        return percentile(self.ms, 99)


def _time_vehicles(
    client: _Client, pick: Callable[[], str], queries: int, min_s: float = 0.0
) -> tuple[list[float], int]:
    """Time at least ``queries`` summaries of vehicles from ``pick``, for at least ``min_s``."""
    samples: list[float] = []
    failed = 0
    until = time.monotonic() + min_s
    while len(samples) < queries or time.monotonic() < until:
        vid = pick()
        started = time.perf_counter()
        status = client.get(f"/v1/analytics/performance/{vid}")
        samples.append((time.perf_counter() - started) * 1000)
        failed += status != 200
    return samples, failed


def vehicle_latency(
    api: ApiProcess,
    ids: list[str],
    queries: int,
    warmup: int,
    fleet_clients: int,
    min_s: float = 0.0,
    seed: int = 7,
) -> VehicleLatency:
    """Time per-vehicle summaries of random ``ids`` while ``fleet_clients`` loop.

    At least ``queries`` of them, for at least ``min_s`` seconds. With
    ``fleet_clients`` = 0 this is the baseline. Otherwise sampling starts once
    every fleet client has had an answer (the load is at its steady state), and
    the fleet clients stop after it.
    """
    rng = random.Random(seed)

    def pick() -> str:
        return rng.choice(ids)

    stop = threading.Event()
    answered = threading.Barrier(fleet_clients + 1)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def fleet_loop() -> None:
        client = _Client(api)
        first = True
        try:
            while not stop.is_set():
                status = client.get(FLEET_PATH)
                with lock:
                    statuses[status] += 1
                if first:
                    first = False
                    answered.wait()
        finally:
            client.close()

    threads = [threading.Thread(target=fleet_loop, daemon=True) for _ in range(fleet_clients)]
    sampler = _Client(api)
    try:
        _time_vehicles(sampler, pick, warmup)
        for thread in threads:
            thread.start()
        if threads:
            answered.wait(timeout=120)
        ms, failed = _time_vehicles(sampler, pick, queries, min_s)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        sampler.close()
    return VehicleLatency(ms, failed, statuses)


def measure_fleet_load(
    database: Database,
    ids: list[str],
    queries: int,
    warmup: int,
    fleet_clients: int,
    min_s: float,
) -> dict[str, float | int]:
    """Per-vehicle p50/p99 through the API alone, then with ``fleet_clients`` fleet loops.

    Each phase times at least ``queries`` summaries for at least ``min_s`` seconds.
    """
    with analytics_process(database) as api:
        say(f"through the API: per-vehicle summaries alone (>= {queries}, >= {min_s:g} s)")
        alone = vehicle_latency(api, ids, queries, warmup, 0, min_s)
        say(
            f"  {len(alone.ms)} summaries: p50 {alone.p50:.2f} ms, p99 {alone.p99:.2f} ms, "
            f"{alone.failed} failed"
        )
        say(f"through the API: per-vehicle summaries with {fleet_clients} fleet clients")
        loaded = vehicle_latency(api, ids, queries, warmup, fleet_clients, min_s)
        say(
            f"  {len(loaded.ms)} summaries: "
            f"p50 {loaded.p50:.2f} ms, p99 {loaded.p99:.2f} ms, {loaded.failed} failed; "
            f"fleet answers {dict(sorted(loaded.fleet_statuses.items()))}"
        )
    ratio = loaded.p99 / alone.p99
    print(
        f"per-vehicle p99 through the API: alone {alone.p99:.2f} ms, "
        f"with {fleet_clients} concurrent fleet queries {loaded.p99:.2f} ms, ratio {ratio:.1f}"
    )
    return {
        "api_vehicle_p50_ms": round(alone.p50, 2),
        "api_vehicle_p99_ms": round(alone.p99, 2),
        "api_vehicle_p50_fleet_ms": round(loaded.p50, 2),
        "api_vehicle_p99_fleet_ms": round(loaded.p99, 2),
        "api_vehicle_p99_ratio": round(ratio, 2),
        "api_vehicle_samples": len(alone.ms),
        "api_vehicle_samples_fleet": len(loaded.ms),
        "api_vehicle_failed_fleet": loaded.failed,
        "api_fleet_clients": fleet_clients,
        "api_fleet_ok": loaded.fleet_statuses[200],
        "api_fleet_refused": loaded.fleet_statuses[503],
    }
