"""Process plumbing for the local stack: pid files, identity checks, start, stop, ports.

A pid file alone proves nothing: the pid may have been reused by an unrelated
process after ours died. So a component counts as running only if its pid is
alive AND the process's command line (and, for processes we start ourselves,
its environment marker) matches what we started. A pid file that fails the
check is stale and is removed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from _common import EXIT_PREREQ, StackError

#: Environment variable set on every process we start; its value is the stack dir.
#: It ties a process to one stack, which a generic command line
#: (``python -m consumers meter``) cannot.
MARKER = "ENERGY_STACK_DIR"

#: Decides from a command line (argv list) whether a process is the one we expect.
ArgvMatcher = Callable[[list[str]], bool]


def read_cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, or None if it is gone or a zombie (empty cmdline)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode("utf-8", errors="replace").split("\0")


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie holds no ports and no files)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    # The state letter follows the command name, which is in parentheses and may
    # itself contain spaces or parentheses: split after the LAST ')'.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def has_marker(pid: int, stack_dir: Path) -> bool:
    """True if the process's environment carries our marker for ``stack_dir``."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{MARKER}={stack_dir}".encode() in environ


def read_pid(pid_file: Path) -> int | None:
    """The pid stored in a pid file, or None if the file is missing or garbled."""
    try:
        return int(pid_file.read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_ours(pid: int, matches: ArgvMatcher, marker_dir: Path | None) -> bool:
    argv = read_cmdline(pid) if is_alive(pid) else None
    if argv is None or not matches(argv):
        return False
    return marker_dir is None or has_marker(pid, marker_dir)


def _find_marked(matches: ArgvMatcher, marker_dir: Path) -> int | None:
    """Search all processes for one of ours (marker + command line); None if there is none."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_ours(int(entry.name), matches, marker_dir):
            return int(entry.name)
    return None


def verified_pid(
    pid_file: Path, matches: ArgvMatcher, marker_dir: Path | None = None
) -> int | None:
    """The pid from ``pid_file`` if that process is alive and is ours, else None.

    A stale pid file (process gone, or pid reused by something else) is deleted.
    ``marker_dir`` additionally requires our environment marker for that stack, and
    lets a lost or overwritten pid file be recovered by searching for the marker,
    so that `down` never leaves one of our processes behind.
    """
    pid = read_pid(pid_file)
    if pid is not None and _is_ours(pid, matches, marker_dir):
        return pid
    found = _find_marked(matches, marker_dir) if marker_dir is not None else None
    if found is not None:
        pid_file.write_text(f"{found}\n", encoding="utf-8")
        return found
    pid_file.unlink(missing_ok=True)
    pid_file.with_suffix(".port").unlink(missing_ok=True)  # see write_pid
    return None


def write_pid(pid_file: Path, pid: int, port_file: Path, port: int) -> None:
    """Record a started component's pid and the port it was started on."""
    pid_file.write_text(f"{pid}\n", encoding="utf-8")
    port_file.write_text(f"{port}\n", encoding="utf-8")


def recorded_port(port_file: Path) -> int | None:
    """The port recorded by `write_pid`, or None."""
    return read_pid(port_file)


def spawn_detached(
    argv: Sequence[str], *, log: Path, env: Mapping[str, str], cwd: Path, banner: str
) -> int:
    """Start ``argv`` in its own session, stdout+stderr appended to ``log``; return its pid.

    Its own session means that Ctrl-C in the terminal that ran ``up`` does not reach
    it, and `stop` can signal its whole process group. A banner line separates
    this run from earlier ones in the (appended) log.
    """
    with log.open("ab") as handle:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        handle.write(f"\n=== stack: {banner} at {stamp} ===\n".encode())
        handle.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    return proc.pid


def _signal(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (or to ``pid`` alone if it leads none)."""
    try:
        # Our processes lead their own group (start_new_session), so this also
        # reaches any children they forked (uvicorn workers, ...).
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for ``pids`` to exit; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if is_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if is_alive(pid)]
    return alive


def stop(pids: Sequence[int], *, grace: float) -> list[int]:
    """SIGTERM ``pids`` together, wait up to ``grace`` s, then SIGKILL the rest.

    Returns the pids that had to be killed. The caller must have verified that
    the pids are ours (`verified_pid`) just before.
    """
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    stubborn = _wait_gone(pids, grace)
    for pid in stubborn:
        _signal(pid, signal.SIGKILL)
    if _wait_gone(stubborn, 10.0):
        raise StackError(f"processes {stubborn} survived SIGKILL")
    return stubborn


def port_in_use(port: int) -> bool:
    """True if something listens on 127.0.0.1:``port`` (or on all addresses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port with only TIME_WAIT leftovers is free to us too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _port_owner(port: int) -> str:
    """Best-effort description of who listens on ``port`` (from ``ss``), or ''."""
    try:
        out = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    # ss prints e.g. users:(("java",pid=123,fd=95))
    match = re.search(r'users:\(\("([^"]+)",pid=(\d+)', out)
    return f" by {match.group(1)} (pid {match.group(2)})" if match else ""


def require_free_port(port: int, what: str, hint: str) -> None:
    """Raise a one-line prerequisite error if ``port`` (needed by ``what``) is taken."""
    if port_in_use(port):
        raise StackError(
            f"port {port} ({what}) is already in use{_port_owner(port)}, "
            f"not by this stack; free it or {hint}",
            code=EXIT_PREREQ,
        )


def port_open(port: int) -> bool:
    """True if a TCP connection to 127.0.0.1:``port`` succeeds (someone accepts)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    """True if GET ``url`` answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:  # noqa: S310 (fixed http URL)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False
