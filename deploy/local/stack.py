"""Run the project's local stack without Docker: Kafka, PostgreSQL, the five services, Prometheus.

Usage (from anywhere; relative ``--dir`` paths are taken from the current folder)::

    .venv/bin/python deploy/local/stack.py up|infra-up|down|status|destroy [options]

``up`` starts the infrastructure (Kafka broker with its metrics agent, PostgreSQL
server, database, roles, migrations, topics) and then the apps, the PostgreSQL
exporter and Prometheus, waiting until each one is ready; ``infra-up``
stops after the infrastructure (the test suite uses it, with ``--json``). Both are
idempotent: components already running are left alone. ``down`` stops everything
and keeps the data; ``destroy`` also deletes the stack folder.

Exit codes: 0 success, 1 a component failed, 2 a missing prerequisite. Errors are
one line on stderr, prefixed ``stack:``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _apps
import _kafka
import _postgres
import _procs
import _prometheus
from _common import (
    EXIT_PREREQ,
    REPO_ROOT,
    VENV_DIR,
    VENV_PYTHON,
    Layout,
    StackError,
    eprint,
    read_or_create_secret,
    say,
)

#: Entries a stack folder may hold; `destroy` refuses to delete any other folder.
_STACK_ENTRIES = {"logs", "run", "kafka", "pg", "secrets", "api-key", "prometheus"}


def _port(raw: str) -> int:
    """argparse type for a TCP port number."""
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port number")
    return int(raw)


def _env_port(name: str, default: int) -> int:
    """A port number from environment variable ``name``, or ``default`` if unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise StackError(f"{name}={raw!r} is not a port number", code=EXIT_PREREQ)
    return int(raw)


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know: the stack folder and every port."""

    layout: Layout
    kafka_port: int
    controller_port: int
    kafka_jmx_port: int
    pg_port: int
    app_ports: _apps.AppPorts
    monitor_ports: _prometheus.MonitorPorts
    json: bool

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"


def _parse(argv: list[str]) -> tuple[str, Settings]:
    parser = argparse.ArgumentParser(
        prog="stack.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "infra-up", "down", "status", "destroy"])
    parser.add_argument(
        "--dir",
        default=str(Layout.named("dev").root),
        help="the stack folder (default: <repo>/.stack/dev)",
    )
    parser.add_argument(
        "--kafka-port",
        type=_port,
        default=None,
        help="Kafka client port (env STACK_KAFKA_PORT, default 19092)",
    )
    parser.add_argument(
        "--kafka-controller-port",
        type=_port,
        default=None,
        help="KRaft controller port (env STACK_KAFKA_CONTROLLER_PORT, default 19093)",
    )
    parser.add_argument(
        "--kafka-jmx-port",
        type=_port,
        default=None,
        help="the broker's metrics agent (env STACK_KAFKA_JMX_PORT, default 9404)",
    )
    parser.add_argument(
        "--pg-port",
        type=_port,
        default=None,
        help="PostgreSQL port (env STACK_PG_PORT, default 15432)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="up/infra-up/status: print one JSON object as the last stdout line",
    )
    args = parser.parse_args(argv)
    settings = Settings(
        layout=Layout(Path(args.dir).absolute()),
        kafka_port=args.kafka_port or _env_port("STACK_KAFKA_PORT", 19092),
        controller_port=args.kafka_controller_port
        or _env_port("STACK_KAFKA_CONTROLLER_PORT", 19093),
        kafka_jmx_port=args.kafka_jmx_port or _env_port("STACK_KAFKA_JMX_PORT", 9404),
        pg_port=args.pg_port or _env_port("STACK_PG_PORT", 15432),
        app_ports=_apps.AppPorts(
            gateway=_env_port("GATEWAY_PORT", 8080),
            analytics=_env_port("ANALYTICS_PORT", 8081),
            metrics_base=_env_port("STACK_CONSUMER_METRICS_PORT_BASE", 9101),
        ),
        monitor_ports=_prometheus.MonitorPorts(
            prometheus=_env_port("STACK_PROMETHEUS_PORT", 9090),
            pg_exporter=_env_port("STACK_PG_EXPORTER_PORT", 9187),
        ),
        json=args.json,
    )
    return str(args.command), settings


@contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """Hold the stack's lock so two commands never start or stop the same stack at once."""
    layout.run.mkdir(parents=True, exist_ok=True)
    with layout.lock_file.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another stack command on {layout.root} to finish...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _check_port_unchanged(name: str, running_port: int | None, wanted: int, option: str) -> None:
    """A running component must already be on the port asked for: we never move it."""
    if running_port is not None and running_port != wanted:
        # ``option`` is a command-line option (--pg-port) or an environment variable.
        use = f"{option} {running_port}" if option.startswith("--") else f"{option}={running_port}"
        raise StackError(
            f"{name} of this stack is already running on port {running_port}, not {wanted}; "
            f"run `down` first, or use {use}",
            code=EXIT_PREREQ,
        )


def _check_distinct(settings: Settings, with_apps: bool) -> None:
    """Two components of ours cannot share a port."""
    ports = {
        "--kafka-port": settings.kafka_port,
        "--kafka-controller-port": settings.controller_port,
        "--kafka-jmx-port": settings.kafka_jmx_port,
        "--pg-port": settings.pg_port,
    }
    if with_apps:
        app_ports = settings.app_ports
        ports |= {"GATEWAY_PORT": app_ports.gateway, "ANALYTICS_PORT": app_ports.analytics}
        ports |= {f"{kind} metrics": app_ports.metrics(kind) for kind in _apps.METRICS_KINDS}
        ports |= {
            "STACK_PROMETHEUS_PORT": settings.monitor_ports.prometheus,
            "STACK_PG_EXPORTER_PORT": settings.monitor_ports.pg_exporter,
        }
    seen: dict[int, str] = {}
    for what, port in ports.items():
        if port in seen:
            raise StackError(f"{seen[port]} and {what} are both {port}", code=EXIT_PREREQ)
        seen[port] = what


def _run_migrations(writer_url: str) -> None:
    """Apply the schema migrations as the writer (``python -m consumers migrate``)."""
    say("migrations: running `python -m consumers migrate`")
    env = dict(os.environ, CONSUMER_DATABASE_URL=writer_url)
    result = subprocess.run(
        [str(VENV_PYTHON), "-m", "consumers", "migrate"], env=env, cwd=REPO_ROOT, check=False
    )
    if result.returncode != 0:
        raise StackError(f"migrations failed (exit {result.returncode}; output above)")


def infra_up(settings: Settings) -> _postgres.DbUrls:
    """Start Kafka and PostgreSQL if needed, then ensure database, roles, migrations, topics.

    Every prerequisite is checked before anything starts. Kafka is launched first and
    waited for last, so the JVM boots while PostgreSQL starts.
    """
    layout = settings.layout
    kafka_pid = _kafka.running_pid(layout)
    kafka_port = _procs.recorded_port(layout.port_file(_kafka.NAME)) if kafka_pid else None
    _check_port_unchanged("kafka", kafka_port, settings.kafka_port, "--kafka-port")
    jmx_port = _procs.recorded_port(layout.port_file(_kafka.JMX_NAME)) if kafka_pid else None
    _check_port_unchanged("kafka metrics", jmx_port, settings.kafka_jmx_port, "--kafka-jmx-port")
    pg = _postgres.running(layout)
    _check_port_unchanged("postgres", pg[1] if pg else None, settings.pg_port, "--pg-port")

    # Prerequisites of whatever has to start, before starting anything.
    if kafka_pid is None:
        hint = "choose other ports with --kafka-port / --kafka-controller-port"
        _procs.require_free_port(settings.kafka_port, "kafka", hint)
        _procs.require_free_port(settings.controller_port, "kafka controller", hint)
        _procs.require_free_port(
            settings.kafka_jmx_port, "kafka metrics", "choose another with --kafka-jmx-port"
        )
        _kafka.check_java()
        _kafka.ensure_jars()
        _kafka.ensure_jmx_agent()
    if pg is None:
        _procs.require_free_port(settings.pg_port, "postgres", "choose another with --pg-port")
        _postgres.ensure_bindir()

    if kafka_pid is None:
        libs = _kafka.ensure_jars()  # cached by the check above: instant
        _kafka.write_config(layout, settings.kafka_port, settings.controller_port)
        _kafka.format_storage_once(libs, layout)
        env = dict(os.environ, **{_procs.MARKER: str(layout.root)})
        kafka_pid = _kafka.start(
            libs,
            layout,
            settings.kafka_port,
            env,
            agent=_kafka.ensure_jmx_agent(),  # cached by the check above: instant
            jmx_port=settings.kafka_jmx_port,
        )
        say(f"kafka: starting (pid {kafka_pid}, log {layout.log(_kafka.NAME)})")
    else:
        say(f"kafka: already running (pid {kafka_pid}, port {settings.kafka_port})")

    db = _postgres.urls(layout, settings.pg_port)
    if pg is None:
        bindir = _postgres.ensure_bindir()  # found by the check above: instant
        real = _postgres.prepare(layout)
        _postgres.initdb_once(bindir, layout, real)
        pg_pid = _postgres.start(bindir, layout, real, settings.pg_port)
        say(f"postgres: started (pid {pg_pid}, port {settings.pg_port})")
    else:
        say(f"postgres: already running (pid {pg[0]}, port {pg[1]})")
    _postgres.wait_ready(db, layout)
    _postgres.bootstrap(db, layout)
    say(
        f"postgres: database {_postgres.DATABASE} with roles "
        f"{_postgres.WRITER} / {_postgres.READER} in place"
    )
    _run_migrations(db.writer)

    _kafka.wait_ready(layout, kafka_pid, settings.kafka_port)
    say(f"kafka: ready at {settings.kafka_bootstrap} (produced and consumed a message)")
    created = _kafka.ensure_topics(settings.kafka_port)
    say(f"kafka: created topics {', '.join(created)}" if created else "kafka: topics in place")
    return db


def _api_key(layout: Layout) -> str:
    """``ENERGY_API_KEY`` if set, else a key generated once and kept in ``<dir>/api-key``."""
    return os.environ.get("ENERGY_API_KEY") or read_or_create_secret(layout.api_key_file, nbytes=32)


def _define_apps(settings: Settings, db: _postgres.DbUrls | None) -> list[_apps.App]:
    """The apps of this stack, monitoring last (``db`` None: only their identity matters)."""
    services = _apps.define(
        settings.app_ports,
        kafka_bootstrap=settings.kafka_bootstrap,
        writer_url=db.writer if db else "",
        reader_url=db.reader if db else "",
        api_key=_api_key(settings.layout) if db else "",
    )
    monitoring = _prometheus.define(
        settings.layout, settings.monitor_ports, db.monitor if db else ""
    )
    return services + monitoring


def up(settings: Settings) -> dict[str, Any]:
    """``infra-up``, then start each app that is not running and wait until all are ready."""
    layout = settings.layout
    # Check the apps' ports before starting any infrastructure: fail fast.
    for app in _define_apps(settings, None):
        pid = _apps.running_pid(layout, app)
        if pid is None:
            _procs.require_free_port(app.port, app.name, f"set {app.port_variable}")
        else:
            running_port = _procs.recorded_port(layout.port_file(app.name))
            _check_port_unchanged(app.name, running_port, app.port, app.port_variable)
    _prometheus.ensure_installed()
    db = infra_up(settings)
    apps = _define_apps(settings, db)
    _prometheus.write_config(layout, apps, settings.kafka_jmx_port)
    started: list[tuple[_apps.App, int]] = []
    for app in apps:
        pid = _apps.running_pid(layout, app)
        if pid is None:
            started.append((app, _apps.start(layout, app)))
        else:
            say(f"{app.name}: already running (pid {pid}, port {app.port})")
    _apps.wait_ready(layout, started)
    ports = settings.app_ports
    return {
        **_infra_json(settings, db),
        "gateway_url": f"http://127.0.0.1:{ports.gateway}",
        "analytics_url": f"http://127.0.0.1:{ports.analytics}",
        "metrics_urls": {
            kind: f"http://127.0.0.1:{ports.metrics(kind)}/metrics" for kind in _apps.METRICS_KINDS
        }
        | {
            "kafka": f"http://127.0.0.1:{settings.kafka_jmx_port}/metrics",
            "postgres": f"http://127.0.0.1:{settings.monitor_ports.pg_exporter}/metrics",
        },
        "prometheus_url": f"http://127.0.0.1:{settings.monitor_ports.prometheus}",
        "api_key": _api_key(layout),
        "logs": str(layout.logs),
    }


def _infra_json(settings: Settings, db: _postgres.DbUrls) -> dict[str, Any]:
    return {
        "kafka_bootstrap": settings.kafka_bootstrap,
        "admin_url": db.admin,
        "writer_url": db.writer,
        "reader_url": db.reader,
        "dir": str(settings.layout.root),
    }


def down(settings: Settings) -> None:
    """Stop the apps, then Kafka, then PostgreSQL; keep all data. Idempotent."""
    layout = settings.layout
    _apps.stop_all(layout, list(reversed(_define_apps(settings, None))))
    _kafka.stop(layout)
    pid = _postgres.stop(layout)
    say(f"postgres: stopped (pid {pid})" if pid else "postgres: not running")


def status(settings: Settings) -> dict[str, Any]:
    """Print one line per component: running/stopped, pid, port; return the same as a dict."""
    layout = settings.layout
    rows: list[tuple[str, int | None, int]] = []
    pid = _kafka.running_pid(layout)
    rows.append(
        ("kafka", pid, _procs.recorded_port(layout.port_file("kafka")) or settings.kafka_port)
    )
    jmx_port = _procs.recorded_port(layout.port_file(_kafka.JMX_NAME))
    rows.append(("kafka-jmx", pid if jmx_port else None, jmx_port or settings.kafka_jmx_port))
    pg = _postgres.running(layout)
    rows.append(("postgres", pg[0] if pg else None, pg[1] if pg else settings.pg_port))
    for app in _define_apps(settings, None):
        pid = _apps.running_pid(layout, app)
        rows.append((app.name, pid, _procs.recorded_port(layout.port_file(app.name)) or app.port))
    for name, pid, port in rows:
        state = "running" if pid else "stopped"
        say(f"{name:<17} {state:<8} pid {pid or '-':<8} port {port}")
    return {
        name: {"running": pid is not None, "pid": pid, "port": port} for name, pid, port in rows
    }


def destroy(settings: Settings) -> None:
    """``down``, then delete the stack folder (and its /var/tmp part, if any)."""
    root = settings.layout.root
    unexpected = sorted({entry.name for entry in root.iterdir()} - _STACK_ENTRIES)
    if unexpected:
        raise StackError(
            f"{root} does not look like a stack folder (it holds {', '.join(unexpected[:5])}); "
            "not deleting it"
        )
    down(settings)
    _postgres.remove_external(settings.layout)
    shutil.rmtree(root)
    say(f"deleted {root}")


def _ensure_venv_python(args: list[str]) -> None:
    """Re-run this script (with ``args``) under the project venv's Python if needed.

    The script needs aiokafka and psycopg, which only the venv has.
    """
    if Path(sys.prefix).resolve() == VENV_DIR.resolve():
        os.environ.pop("_STACK_REEXEC", None)  # keep it out of the apps' environment
        return
    if not VENV_PYTHON.exists():
        raise StackError(
            f"the project venv is missing ({VENV_PYTHON}); create it first (uv sync)",
            code=EXIT_PREREQ,
        )
    if os.environ.get("_STACK_REEXEC"):  # the venv's python did not report the venv
        raise StackError(f"{VENV_PYTHON} does not run inside {VENV_DIR}", code=EXIT_PREREQ)
    os.environ["_STACK_REEXEC"] = "1"
    argv = [str(VENV_PYTHON), str(Path(__file__).resolve()), *args]
    os.execv(VENV_PYTHON, argv)  # noqa: S606 (our own venv's python, fixed argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit code (errors are printed as ``stack: ...``)."""
    started = time.monotonic()
    args = sys.argv[1:] if argv is None else argv
    try:
        _ensure_venv_python(args)
        command, settings = _parse(args)
        layout = settings.layout
        result: dict[str, Any] | None = None
        if command in ("up", "infra-up"):
            _check_distinct(settings, with_apps=command == "up")
            layout.create()
            with _locked(layout):
                if command == "up":
                    result = up(settings)
                else:
                    result = _infra_json(settings, infra_up(settings))
            _print_summary(command, result, time.monotonic() - started)
        elif command == "status":
            result = status(settings)
        elif not layout.root.exists():
            say(f"{layout.root} does not exist: nothing to do")
        else:
            with _locked(layout):
                (down if command == "down" else destroy)(settings)
        if settings.json and result is not None:
            print(json.dumps(result), flush=True)
    except StackError as error:
        eprint(f"stack: {error}")
        if error.detail:
            eprint(error.detail)
        return error.code
    except KeyboardInterrupt:
        eprint("stack: interrupted; `down` stops whatever was already started")
        return 130
    except BrokenPipeError:
        # stdout was closed early (`stack.py status | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _print_summary(command: str, info: dict[str, Any], elapsed: float) -> None:
    """The human summary after ``up`` / ``infra-up``."""
    what = "stack" if command == "up" else "infrastructure"
    say(f"\n{what} is up in {elapsed:.1f} s (dir {info['dir']})")
    if command == "up":
        metrics = info["metrics_urls"]
        say(f"  {'gateway':<20}{info['gateway_url']}")
        say(f"  {'analytics':<20}{info['analytics_url']}")
        say(f"  {'prometheus':<20}{info['prometheus_url']}")
        for kind, url in metrics.items():
            say(f"  {kind + ' metrics':<20}{url}")
    say(f"  {'kafka':<20}{info['kafka_bootstrap']}")
    say(f"  {'writer db':<20}{info['writer_url']}")
    say(f"  {'reader db':<20}{info['reader_url']}")
    if command == "up":
        say(f"  {'api key':<20}{info['api_key']}")
    say(f"  {'logs':<20}{Path(str(info['dir'])) / 'logs'}")


if __name__ == "__main__":
    sys.exit(main())
