"""Every component of the engine running and scraped by a Prometheus of the test's own.

Prometheus (Debian's package) runs on the project's own scrape config and
rules (``deploy/prometheus``, rendered for loopback ports by
:mod:`deploy.local.prometheus_config`) and scrapes real processes: a gateway
the caller started, the three consumers, maintenance and the analytics API on
the module's database and topics, ``prometheus-postgres-exporter`` on that
database, and a broker's JMX exporter agent. Every process is stopped with the
module's (see ``ModuleEnv``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg

from deploy.local import prometheus_config
from deploy.local.services import ROOT, free_port
from tests.conftest import API_KEY, WORKER_LOGS, ModuleEnv, wait_for

#: Scrape and rule evaluation interval of the test's Prometheus.
SCRAPE_INTERVAL = "1s"
#: The exporter's login: statistics only (pg_monitor), as the local stack's.
MONITOR_ROLE = "energy_test_monitor"
#: The consumer workers, by stream; their target host in prometheus.yml is ``consumer-<stream>``.
STREAMS = ("meter", "vehicle", "links")


class Prometheus:
    """Prometheus's HTTP API at ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        """The ``data`` of ``GET <path>?<params>``; raises AssertionError on an error answer."""
        body = httpx.get(f"{self.url}{path}", params=params, timeout=10).json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def series(self, expr: str) -> int:
        """How many series the instant query ``expr`` answers (raises if it errors)."""
        return len(self.get("/api/v1/query", query=expr)["result"])

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets."""
        found: list[dict[str, Any]] = self.get("/api/v1/targets", state="active")["activeTargets"]
        return found

    def alerts(self, name: str, state: str | None = None, **labels: str) -> list[dict[str, Any]]:
        """Alerts ``name`` (in ``state``, ``pending`` or ``firing``, if given) with ``labels``.

        ``labels`` need only be among the alert's. An alert whose expression no
        longer holds is gone from the answer: "cleared" is an empty list.
        """
        return [
            alert
            for alert in self.get("/api/v1/alerts")["alerts"]
            if alert["labels"]["alertname"] == name
            and state in (None, alert["state"])
            and labels.items() <= alert["labels"].items()
        ]


@dataclass(frozen=True)
class Monitored:
    """What `start_monitored` runs: its Prometheus, the port of each target host, the workers."""

    prometheus: Prometheus
    ports: dict[str, int]
    consumers: dict[str, subprocess.Popen[bytes]]


def require(program: str) -> str:
    """The path of ``program``; fails (never skips) when it is not installed."""
    found = shutil.which(program)
    assert found, f"{program} is not installed (Debian package {program}; .ci/run installs it)"
    return found


def _monitor_url(env: ModuleEnv) -> str:
    """A pg_monitor login on this module's database, made once per server."""
    with psycopg.connect(env.services.admin_url, autocommit=True) as admin:
        found = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (MONITOR_ROLE,))
        if found.fetchone() is None:
            admin.execute(
                f"CREATE ROLE {MONITOR_ROLE} LOGIN PASSWORD '{MONITOR_ROLE}' IN ROLE pg_monitor"
            )
    parts = urllib.parse.urlsplit(env.writer_url)
    netloc = f"{MONITOR_ROLE}:{MONITOR_ROLE}@{parts.hostname}:{parts.port or 5432}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query="sslmode=disable"))


def _start(env: ModuleEnv, name: str, argv: list[str], **extra: str) -> None:
    """Run ``argv`` (stopped with the module's processes), its output in the workers' logs."""
    WORKER_LOGS.mkdir(parents=True, exist_ok=True)
    with (WORKER_LOGS / f"{env.name}-{name}.log").open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=dict(os.environ, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    env.processes.append(proc)


def start_consumer(env: ModuleEnv, stream: str, metrics_port: int) -> subprocess.Popen[bytes]:
    """A ``stream`` worker serving its metrics on ``metrics_port``, probing its DLQ every second."""
    return env.start_consumer(
        stream, CONSUMER_METRICS_PORT=str(metrics_port), CONSUMER_DLQ_PROBE_INTERVAL_S="1"
    )


def start_monitored(
    env: ModuleEnv,
    home: Path,
    *,
    gateway_port: int,
    kafka_jmx_port: int,
    rule_speedup: int | None = None,
) -> Monitored:
    """Start every component but the gateway, and Prometheus (folder ``home``) scraping them all.

    The gateway on ``gateway_port`` and the broker agent on ``kafka_jmx_port``
    are the caller's. ``rule_speedup`` runs the project's rules with every
    duration divided by it (see `prometheus_config.render_rules`). Returns once
    Prometheus reports every target of its config up; raises AssertionError if
    they are not within 30 s.
    """
    ports = {
        name: free_port()
        for name in (
            "analytics",
            *(f"consumer-{stream}" for stream in STREAMS),
            "maintenance",
            "postgres-exporter",
            "localhost",
        )
    }
    ports |= {"gateway": gateway_port, "kafka": kafka_jmx_port}
    consumers = {
        stream: start_consumer(env, stream, ports[f"consumer-{stream}"]) for stream in STREAMS
    }
    env.start_consumer(
        "maintain", "--every", "3600", CONSUMER_METRICS_PORT=str(ports["maintenance"])
    )
    _start(
        env,
        "analytics",
        [sys.executable, "-m", "analytics_api"],
        ANALYTICS_HOST="127.0.0.1",
        ANALYTICS_PORT=str(ports["analytics"]),
        ANALYTICS_DATABASE_URL=env.reader_url,
        ANALYTICS_API_KEYS=API_KEY,
    )
    queries = prometheus_config.PROMETHEUS_DIR / "postgres-queries.yml"
    _start(
        env,
        "postgres-exporter",
        [
            require("prometheus-postgres-exporter"),
            f"--web.listen-address=127.0.0.1:{ports['postgres-exporter']}",
            f"--extend.query-path={queries}",
        ],
        DATA_SOURCE_NAME=_monitor_url(env),
    )
    config = prometheus_config.write(
        home, ports, interval=SCRAPE_INTERVAL, rule_speedup=rule_speedup
    )
    _start(
        env,
        "prometheus",
        [
            require("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{ports['localhost']}",
        ],
    )
    prometheus = Prometheus(f"http://127.0.0.1:{ports['localhost']}")

    def all_up() -> bool:
        try:
            targets = prometheus.targets()
        except httpx.TransportError:
            return False  # Prometheus not listening yet: the connection is refused
        except ValueError:
            return False  # listening, but still starting: its API answers 503 in plain text
        return len(targets) == len(ports) and all(t["health"] == "up" for t in targets)

    wait_for(
        all_up,
        timeout_s=30,
        interval_s=0.25,
        explain=lambda: str(
            [(t["scrapeUrl"], t["health"], t["lastError"]) for t in prometheus.targets()]
        ),
    )
    return Monitored(prometheus, ports, consumers)
