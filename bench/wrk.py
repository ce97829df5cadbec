"""HTTP load from wrk (https://github.com/wg/wrk), for the gateway benchmark.

wrk is a C load generator (epoll, one thread per ``--threads``): closed-loop
keep-alive HTTP/1.1 connections, each sending its next request as soon as
the previous answer arrived. ``wrk_bodies.lua`` beside this file sends
prepared request bodies in turn and prints the figures as one JSON line.

wrk stops at the end of its duration without waiting for the answers still in
flight, so the server may have accepted up to one request per connection more
than wrk counted; :class:`WrkResult` says how many that can be.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("wrk_bodies.lua")
INSTALL_HINT = "install it with `apt-get install wrk` (Debian, Ubuntu) or from your distribution"


class WrkMissing(RuntimeError):
    """wrk is not on ``PATH``; the message says how to get it."""


def find_wrk() -> str:
    """The path of the ``wrk`` executable. Raises :class:`WrkMissing`."""
    found = shutil.which("wrk")
    if found is None:
        raise WrkMissing(f"wrk is not installed: {INSTALL_HINT}")
    return found


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run: what it counted, its latencies and its own CPU time."""

    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_s: float
    #: Requests sent but not answered when wrk stopped: at most one per connection.
    max_in_flight: int

    @property
    def answered_2xx(self) -> int:
        """Requests answered with a 2xx status."""
        return self.requests - self.non_2xx


@dataclass(frozen=True, slots=True)
class WrkLoad:
    """POST ``bodies`` (one request body each, in turn) to ``url + path``."""

    url: str
    path: str
    headers: dict[str, str]
    bodies: Sequence[bytes]
    connections: int
    threads: int = 1

    def run(self, duration_s: float) -> WrkResult:
        """Run wrk for ``duration_s`` (whole seconds, at least 1). Raises ``RuntimeError``."""
        wrk = find_wrk()
        with tempfile.NamedTemporaryFile("wb", suffix=".bodies") as bodies:
            for body in self.bodies:
                if b"\n" in body:
                    raise ValueError("a request body holds a newline (one body per line)")
                bodies.write(body + b"\n")
            bodies.flush()
            argv = [wrk, f"--threads={self.threads}", f"--connections={self.connections}"]
            argv += [f"--duration={max(1, round(duration_s))}s", "--timeout=30s"]
            for name, value in self.headers.items():
                argv += ["--header", f"{name}: {value}"]
            argv += ["--script", str(SCRIPT), self.url, "--", bodies.name, self.path]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0 or not done.stdout.strip():
            raise RuntimeError(f"wrk failed (exit {done.returncode}): {done.stderr.strip()}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        return WrkResult(
            requests=figures["requests"],
            seconds=figures["duration_us"] / 1e6,
            non_2xx=figures["non_2xx"],
            socket_errors=sum(
                figures[key]
                for key in ("connect_errors", "read_errors", "write_errors", "timeouts")
            ),
            p50_ms=figures["p50_us"] / 1000,
            p90_ms=figures["p90_us"] / 1000,
            p99_ms=figures["p99_us"] / 1000,
            max_ms=figures["max_us"] / 1000,
            cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            max_in_flight=self.connections,
        )
