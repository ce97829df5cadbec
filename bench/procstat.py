"""CPU time and memory of a process tree, and of the whole machine, from ``/proc`` (Linux).

Benchmarks on a 2-core box must show where the CPU went: the server under
test, the load generator, or everything else (Kafka, PostgreSQL).
Percentages are of one core: 200 % is the whole of a 2-core machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may hold spaces: split after it.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def cmdline(pid: int) -> str:
    """The command line of ``pid``, space-separated ("" if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def listener_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` (IPv4 or IPv6), if we may see it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local address is HEX_IP:HEX_PORT; state 0A is LISTEN.
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (exited ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def rss_mb(pid: int, peak: bool = False) -> float:
    """Resident memory (or its peak, VmHWM) of ``pid`` in MiB; 0 if it is gone."""
    key = "VmHWM:" if peak else "VmRSS:"
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot, from ``/proc/stat``."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # up to steal; guest time is already inside user
    return (total - idle) / _TICKS, total / _TICKS


@dataclass(slots=True)
class CpuMeter:
    """CPU used by some process trees and the machine between :meth:`start` and :meth:`stop`."""

    roots: dict[str, int]
    _wall: float = 0.0
    _tree: dict[str, float] | None = None
    _machine: tuple[float, float] = (0.0, 0.0)

    def _sample(self) -> dict[str, float]:
        return {name: cpu_seconds(descendants(pid)) for name, pid in self.roots.items()}

    def start(self) -> None:
        """Take the first sample."""
        self._wall = time.monotonic()
        self._tree = self._sample()
        self._machine = machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        """Percent of one core per tree since :meth:`start`, plus ``machine`` (all cores)."""
        assert self._tree is not None, "start() first"  # noqa: S101 -- a usage error
        wall = max(time.monotonic() - self._wall, 1e-9)
        after = self._sample()
        busy, total = machine_busy_seconds()
        cores = os.cpu_count() or 1
        result = {
            name: round(100 * (after[name] - self._tree[name]) / wall, 1) for name in self.roots
        }
        elapsed_total = max(total - self._machine[1], 1e-9)
        result["machine"] = round(100 * cores * (busy - self._machine[0]) / elapsed_total, 1)
        return result
