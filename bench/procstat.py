"""CPU time and memory of process trees and of the whole machine, through psutil.

Benchmarks on a 2-core box must show where the CPU went: the server under
test, the load generator, or everything else (Kafka, PostgreSQL).
Percentages are of one core: 200 % is the whole of a 2-core machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

import psutil

MIB = 1024 * 1024


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and every live process below it (none if ``pid`` is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    """User + system CPU seconds used so far by ``processes`` (exited ones count 0)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot; idle and I/O wait are not busy."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    # Guest time is already inside user time.
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - idle, total


def listener_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` (IPv4 or IPv6), if we may see it."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


@dataclass(frozen=True, slots=True)
class CpuUsage:
    """CPU used between two samples: seconds per process tree, and the machine's share."""

    wall_s: float
    seconds: Mapping[str, float]
    #: Percent of one core used by everything on the machine (200 = a whole 2-core box).
    machine_percent: float

    def percent(self, name: str) -> float:
        """Percent of one core that tree ``name`` used over the interval."""
        return round(100 * self.seconds[name] / self.wall_s, 1)


@dataclass(slots=True)
class CpuMeter:
    """CPU used by some process trees and the machine between :meth:`start` and :meth:`stop`.

    A process of a tree that exits in between takes its CPU time with it.
    """

    roots: dict[str, int]
    _wall: float = 0.0
    _trees: dict[str, float] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)

    def _sample(self) -> dict[str, float]:
        return {name: cpu_seconds(tree(pid)) for name, pid in self.roots.items()}

    def start(self) -> None:
        """Take the first sample."""
        self._wall = time.monotonic()
        self._trees = self._sample()
        self._machine = machine_busy_seconds()

    def stop(self) -> CpuUsage:
        """The CPU used since :meth:`start`."""
        wall = max(time.monotonic() - self._wall, 1e-9)
        after = self._sample()
        busy, total = machine_busy_seconds()
        cores = psutil.cpu_count() or 1
        share = (busy - self._machine[0]) / max(total - self._machine[1], 1e-9)
        return CpuUsage(
            wall_s=wall,
            seconds={name: after[name] - self._trees.get(name, 0.0) for name in self.roots},
            machine_percent=round(100 * cores * share, 1),
        )


class PeakRss:
    """The largest resident memory of each process seen by a background sampler.

    psutil reads the current RSS only (not the kernel's high-water mark), so
    the peak is that of samples every ``every_s`` while the block runs.
    """

    def __init__(self, pids: Iterable[int], every_s: float = 0.1) -> None:
        self._processes = [psutil.Process(pid) for pid in pids]
        self._peak = dict.fromkeys((p.pid for p in self._processes), 0)
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def _sample(self) -> None:
        for process in self._processes:
            try:
                rss = process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            self._peak[process.pid] = max(self._peak[process.pid], rss)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self._sample()

    def __enter__(self) -> PeakRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def mib(self) -> dict[int, float]:
        """Peak RSS in MiB per pid."""
        return {pid: peak / MIB for pid, peak in self._peak.items()}
