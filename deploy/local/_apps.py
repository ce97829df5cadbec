"""The stack's processes: what they are, how to start, check and stop them.

The project's five services each run as ``<repo>/.venv/bin/python -m <module> [arg]``
(the monitoring, `_prometheus`, as programs of its own) from the repo root, with
the current environment plus its own settings, and report readiness over HTTP.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import _procs
from _common import REPO_ROOT, VENV_PYTHON, Layout, StackError, say, tail

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 20.0
CONSUMER_KINDS = ("meter", "vehicle", "links")
#: Processes that serve only metrics/health: the workers, and partition maintenance.
METRICS_KINDS = (*CONSUMER_KINDS, "maintenance")
#: How often the stack's maintenance service runs (``maintain --every``).
MAINTENANCE_EVERY_S = 3600


@dataclass(frozen=True)
class App:
    """One process: ``python -m <args>``, ready when GET ``ready_path`` answers 200.

    With ``program`` (a command found on PATH, e.g. ``prometheus``) it runs
    ``program <args>`` instead.
    """

    name: str
    args: tuple[str, ...]
    port: int
    ready_path: str
    port_variable: str  # the environment variable that moves ``port``
    env: Mapping[str, str] = field(default_factory=dict)
    program: str | None = None

    @property
    def argv(self) -> list[str]:
        if self.program is not None:
            return [self.program, *self.args]
        return [str(VENV_PYTHON), "-m", *self.args]

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.ready_path}"

    def matches(self, argv: list[str]) -> bool:
        """Our process: same arguments (the interpreter's or program's path may differ)."""
        return argv[1:] == self.argv[1:]


@dataclass(frozen=True)
class AppPorts:
    """The ports the apps listen on; consumers expose only metrics/health."""

    gateway: int
    analytics: int
    metrics_base: int

    def metrics(self, kind: str) -> int:
        return self.metrics_base + METRICS_KINDS.index(kind)


def define(
    ports: AppPorts, *, kafka_bootstrap: str, writer_url: str, reader_url: str, api_key: str
) -> list[App]:
    """The apps in start order (gateway, consumers, maintenance, analytics) with their settings."""
    apps = [
        App(
            "gateway",
            ("ingest_gateway",),
            ports.gateway,
            "/readyz",
            "GATEWAY_PORT",
            {
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": str(ports.gateway),
                "GATEWAY_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "GATEWAY_API_KEYS": api_key,
            },
        )
    ]
    for kind in CONSUMER_KINDS:
        apps.append(
            App(
                f"consumer-{kind}",
                ("consumers", kind),
                ports.metrics(kind),
                "/readyz",
                "STACK_CONSUMER_METRICS_PORT_BASE",
                {
                    "CONSUMER_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                    "CONSUMER_DATABASE_URL": writer_url,
                    "CONSUMER_METRICS_HOST": "127.0.0.1",
                    "CONSUMER_METRICS_PORT": str(ports.metrics(kind)),
                },
            )
        )
    apps.append(
        App(
            "maintenance",
            ("consumers", "maintain", "--every", str(MAINTENANCE_EVERY_S)),
            ports.metrics("maintenance"),
            "/readyz",
            "STACK_CONSUMER_METRICS_PORT_BASE",
            {
                "CONSUMER_DATABASE_URL": writer_url,
                "CONSUMER_METRICS_HOST": "127.0.0.1",
                "CONSUMER_METRICS_PORT": str(ports.metrics("maintenance")),
            },
        )
    )
    apps.append(
        App(
            "analytics",
            ("analytics_api",),
            ports.analytics,
            "/readyz",
            "ANALYTICS_PORT",
            {
                "ANALYTICS_HOST": "127.0.0.1",
                "ANALYTICS_PORT": str(ports.analytics),
                "ANALYTICS_DATABASE_URL": reader_url,
                "ANALYTICS_API_KEYS": api_key,
            },
        )
    )
    return apps


def running_pid(layout: Layout, app: App) -> int | None:
    """The app's pid if this stack's instance is running (stale pid files are removed)."""
    return _procs.verified_pid(layout.pid_file(app.name), app.matches, layout.root)


def start(layout: Layout, app: App) -> int:
    """Launch ``app`` detached (output to ``logs/<name>.log``) and return its pid."""
    env = dict(os.environ)
    env.update(app.env)
    env[_procs.MARKER] = str(layout.root)
    # Log lines should reach the log file as they happen, not when a buffer fills.
    env["PYTHONUNBUFFERED"] = "1"
    pid = _procs.spawn_detached(
        app.argv, log=layout.log(app.name), env=env, cwd=REPO_ROOT, banner=f"starting {app.name}"
    )
    _procs.write_pid(layout.pid_file(app.name), pid, layout.port_file(app.name), app.port)
    return pid


def wait_ready(layout: Layout, started: Sequence[tuple[App, int]]) -> None:
    """Wait (60 s at most, from now) until every started app answers its readiness URL.

    Apps that exit or never get ready are stopped, and one error names them all,
    with the last lines of each one's log as detail.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(started)
    failed: list[tuple[App, int, str]] = []
    while pending:
        for app, pid in list(pending):
            if not _procs.is_alive(pid):
                failed.append((app, pid, "exited during startup"))
            elif _procs.http_ok(app.ready_url):
                say(f"{app.name}: ready (pid {pid}, {app.ready_url})")
            else:
                continue
            pending.remove((app, pid))
        if pending and time.monotonic() >= deadline:
            why = f"not ready after {READY_TIMEOUT_S:.0f} s"
            failed += [(app, pid, why) for app, pid in pending]
            break
        if pending:
            time.sleep(0.25)
    if not failed:
        return
    _procs.stop([pid for _, pid, _ in failed if _procs.is_alive(pid)], grace=STOP_GRACE_S)
    for app, _, _ in failed:
        layout.pid_file(app.name).unlink(missing_ok=True)
        layout.port_file(app.name).unlink(missing_ok=True)
    summary = "; ".join(f"{app.name} {why} (log: {layout.log(app.name)})" for app, _, why in failed)
    detail = "\n".join(
        f"    --- last lines of {layout.log(app.name)} ---\n{tail(layout.log(app.name))}"
        for app, _, _ in failed
    )
    raise StackError(summary, detail=detail)


def stop_all(layout: Layout, apps: Sequence[App]) -> None:
    """Stop every running app together (SIGTERM, 20 s grace, then SIGKILL)."""
    running = [(app, running_pid(layout, app)) for app in apps]
    pids = [pid for _, pid in running if pid is not None]
    killed = set(_procs.stop(pids, grace=STOP_GRACE_S)) if pids else set()
    for app, pid in running:
        layout.pid_file(app.name).unlink(missing_ok=True)
        layout.port_file(app.name).unlink(missing_ok=True)
        if pid is None:
            say(f"{app.name}: not running")
        else:
            how = "killed after 20 s" if pid in killed else "stopped"
            say(f"{app.name}: {how} (pid {pid})")
