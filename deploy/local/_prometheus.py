"""The stack's monitoring: Prometheus and the PostgreSQL exporter, from Debian's packages.

Prometheus runs on the project's scrape config and alert rules
(``deploy/prometheus``), rendered into ``<dir>/prometheus`` with the stack's
real ports (`prometheus_config`), and keeps its data in
``<dir>/prometheus/data``. It scrapes the five services, the broker's JMX
exporter agent (started with Kafka, see `_kafka`) and
``prometheus-postgres-exporter``, which reads the server's statistics as the
``pg_monitor`` role of `_postgres` with the queries of
``deploy/prometheus/postgres-queries.yml`` added to its defaults. Both run as
`_apps.App` processes, so `up`, `down` and `status` treat them like the rest.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import _apps
import prometheus_config
from _common import Layout, apt_install

PROMETHEUS = "prometheus"
PG_EXPORTER = "prometheus-postgres-exporter"
PG_QUERIES = prometheus_config.PROMETHEUS_DIR / "postgres-queries.yml"


@dataclass(frozen=True)
class MonitorPorts:
    """Where Prometheus and the PostgreSQL exporter listen."""

    prometheus: int
    pg_exporter: int


def ensure_installed() -> None:
    """Install Debian's ``prometheus`` and ``prometheus-postgres-exporter`` if missing.

    Raises `_common.StackError` (a prerequisite error when not root).
    """
    for program in (PROMETHEUS, PG_EXPORTER):
        if shutil.which(program) is None:
            apt_install(program, f"{program} (on PATH)")


def folder(layout: Layout) -> Path:
    """Prometheus's folder in the stack: its config, rule file links and ``data``."""
    return layout.root / "prometheus"


def write_config(layout: Layout, apps: Sequence[_apps.App], kafka_jmx_port: int) -> Path:
    """Render the project's scrape config with this stack's ports; return its path.

    The config's target hosts are the compose service names, which are the
    stack's app names; the broker's agent is ``kafka`` and Prometheus itself
    ``localhost``.
    """
    targets = {app.name: app.port for app in apps if app.name != "prometheus"}
    targets |= {"kafka": kafka_jmx_port, "localhost": _port_of(apps, "prometheus")}
    return prometheus_config.write(folder(layout), targets)


def _port_of(apps: Sequence[_apps.App], name: str) -> int:
    return next(app.port for app in apps if app.name == name)


def define(layout: Layout, ports: MonitorPorts, monitor_url: str) -> list[_apps.App]:
    """The PostgreSQL exporter, then Prometheus (``monitor_url`` empty: identity only)."""
    exporter = _apps.App(
        "postgres-exporter",
        (
            f"--web.listen-address=127.0.0.1:{ports.pg_exporter}",
            f"--extend.query-path={PG_QUERIES}",
        ),
        ports.pg_exporter,
        "/",
        "STACK_PG_EXPORTER_PORT",
        {"DATA_SOURCE_NAME": f"{monitor_url}?sslmode=disable" if monitor_url else ""},
        program=PG_EXPORTER,
    )
    home = folder(layout)
    prometheus = _apps.App(
        "prometheus",
        (
            f"--config.file={home / 'prometheus.yml'}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{ports.prometheus}",
        ),
        ports.prometheus,
        "/-/ready",
        "STACK_PROMETHEUS_PORT",
        program=PROMETHEUS,
    )
    return [exporter, prometheus]
