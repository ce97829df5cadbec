"""Every panel query of the Grafana dashboards returns data from a live Prometheus.

Grafana itself is not run: its queries are. Prometheus (Debian's package) runs
on the project's own scrape config and rules (``deploy/prometheus``, rendered
for loopback ports by :mod:`deploy.local.prometheus_config`) and scrapes real
processes started here: the gateway, the three consumers, maintenance, the
analytics API, ``prometheus-postgres-exporter`` on this module's database and
the session broker's JMX exporter agent. A short simulated fleet, invalid
events, a duplicate and a poison record go through them; then each panel
query runs against Prometheus's HTTP API and must answer at least one series.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx2 as httpx
import psycopg
import pytest

from bench.gateway_process import GatewayProcess
from deploy.local import prometheus_config
from deploy.local.kafka_tools import produce
from deploy.local.services import ROOT, free_port
from tests.conftest import API_KEY, WORKER_LOGS, ModuleEnv, wait_for

DASHBOARDS = sorted((ROOT / "deploy" / "grafana").rglob("*.json"))
#: Grafana's interval variables, fixed: 1 s scrapes make a minute hold many samples.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
#: Scrape and rule evaluation interval of this test's Prometheus.
SCRAPE_INTERVAL = "1s"
#: The exporter's login: statistics only (pg_monitor), as the local stack's.
MONITOR_ROLE = "energy_test_monitor"
#: Time for every query to have data once every target is up.
DATA_TIMEOUT_S = 45.0


@dataclass(frozen=True)
class PanelQuery:
    """One ``targets[].expr`` of a dashboard panel, variables replaced."""

    dashboard: str
    panel: str
    ref: str
    expr: str


def panel_queries() -> list[PanelQuery]:
    """Every panel query of every dashboard JSON under ``deploy/grafana`` (rows' panels too)."""
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        panels = list(dashboard.get("panels", []))
        panels += [inner for panel in panels for inner in panel.get("panels", [])]
        for panel in panels:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                queries.append(PanelQuery(path.name, panel["title"], target["refId"], expr))
    return queries


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


def _require(program: str) -> str:
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


@pytest.fixture(scope="module")
def monitored(
    env: ModuleEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Prometheus, str, str]]:
    """Every component running and scraped; yields Prometheus, the gateway's URL and key.

    Waits until Prometheus reports every target of its config up.
    """
    stack = env.services.stack
    assert stack is not None, "the broker's metrics come from the local stack's JMX agent"
    ports = {
        name: free_port()
        for name in (
            "analytics",
            "consumer-meter",
            "consumer-vehicle",
            "consumer-links",
            "maintenance",
            "postgres-exporter",
            "localhost",
        )
    }
    with ExitStack() as stack_of_processes:
        gateway = stack_of_processes.enter_context(
            GatewayProcess(env.services.kafka_bootstrap, env.topics, workers=1)
        )
        ports |= {"gateway": gateway.port, "kafka": stack.kafka_jmx_port}
        for stream in ("meter", "vehicle", "links"):
            env.start_consumer(
                stream,
                CONSUMER_METRICS_PORT=str(ports[f"consumer-{stream}"]),
                CONSUMER_DLQ_PROBE_INTERVAL_S="1",
            )
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
        exporter = _require("prometheus-postgres-exporter")
        queries = prometheus_config.PROMETHEUS_DIR / "postgres-queries.yml"
        _start(
            env,
            "postgres-exporter",
            [
                exporter,
                f"--web.listen-address=127.0.0.1:{ports['postgres-exporter']}",
                f"--extend.query-path={queries}",
            ],
            DATA_SOURCE_NAME=_monitor_url(env),
        )
        home = tmp_path_factory.mktemp("prometheus")
        config = prometheus_config.write(home, ports, interval=SCRAPE_INTERVAL)
        _start(
            env,
            "prometheus",
            [
                _require("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{ports['localhost']}",
            ],
        )
        prometheus = Prometheus(f"http://127.0.0.1:{ports['localhost']}")

        def all_up() -> bool:
            try:
                targets = prometheus.targets()
            except OSError:
                return False  # Prometheus not listening yet
            return len(targets) == len(ports) and all(t["health"] == "up" for t in targets)

        wait_for(
            all_up,
            timeout_s=30,
            interval_s=0.25,
            explain=lambda: str(
                [(t["scrapeUrl"], t["health"], t["lastError"]) for t in prometheus.targets()]
            ),
        )
        yield prometheus, gateway.url, gateway.api_key


def _send_load(env: ModuleEnv, gateway_url: str, gateway_key: str, analytics_url: str) -> None:
    """A short simulated fleet, invalid events, a duplicate, poison, analytics reads."""
    simulated = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.simulator",
            "--devices",
            "10",
            "--hours",
            "0.5",
            "--prefix",
            "dash",
            "--url",
            gateway_url,
            "--api-key",
            gateway_key,
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert simulated.returncode == 0, simulated.stdout + simulated.stderr
    auth = {"Authorization": f"Bearer {gateway_key}"}
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    reading = {
        "vehicleId": "dash-dup",
        "soc": 50,
        "kwhDeliveredDc": 0.1,
        "batteryTemp": 30,
        "timestamp": now,
    }
    invalid = [{"meterId": "dash-bad", "voltage": 5000, "timestamp": now}] * 2
    with httpx.Client(base_url=gateway_url, headers=auth) as gateway:
        # The same reading twice: stored once, counted once as a duplicate.
        sent = [gateway.post("/v1/ingest", json=reading).status_code for _ in range(2)]
        assert sent == [202, 202]
        assert gateway.post("/v1/ingest/batch", json=invalid).status_code == 422
    produce(env.services.kafka_bootstrap, env.topics.meter, [(b"dash-poison", b"{not json")])
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=analytics_url, headers=auth) as analytics:
        # Stored once the consumer committed it: then both routes answer 200.
        for path in ("/v1/vehicles/dash-dup/live", "/v1/analytics/performance/dash-dup"):
            wait_for(partial(_answers_200, analytics, path), timeout_s=30)


def _answers_200(client: httpx.Client, path: str) -> bool:
    return client.get(path).status_code == 200


def test_every_panel_query_answers_series(
    env: ModuleEnv, monitored: tuple[Prometheus, str, str]
) -> None:
    prometheus, gateway_url, gateway_key = monitored
    analytics = next(
        t["scrapeUrl"] for t in prometheus.targets() if t["labels"]["job"] == "energy-analytics"
    )
    _send_load(env, gateway_url, gateway_key, analytics.removesuffix("/metrics"))
    queries = panel_queries()
    assert queries, f"no panel query found in {DASHBOARDS}"

    # Rates need two samples after the load, the DLQ probe a round: wait until every
    # query answers (or the deadline), then report each one.
    counts: dict[PanelQuery, int | str] = {}
    deadline = time.monotonic() + DATA_TIMEOUT_S
    while True:
        for query in queries:
            if not isinstance(counts.get(query), int) or counts[query] == 0:
                try:
                    counts[query] = prometheus.series(query.expr)
                except AssertionError as exc:
                    counts[query] = str(exc)
        if all(isinstance(n, int) and n > 0 for n in counts.values()):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for query in queries:
        print(f"{counts[query]!s:>4} series  {query.panel} [{query.ref}]: {query.expr}")
    empty = [f"{q.panel} [{q.ref}]: {q.expr} -> {counts[q]}" for q in queries if counts[q] in (0,)]
    errors = [f"{q.panel} [{q.ref}]: {counts[q]}" for q in queries if isinstance(counts[q], str)]
    assert not errors, "panel queries that error:\n" + "\n".join(errors)
    assert not empty, "panel queries without a series:\n" + "\n".join(empty)


def test_every_scraped_job_has_a_panel(monitored: tuple[Prometheus, str, str]) -> None:
    """Each job's metrics (but Prometheus's own) appear in at least one panel query."""
    prometheus = monitored[0]
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", " ".join(q.expr for q in panel_queries())))
    jobs = sorted({t["labels"]["job"] for t in prometheus.targets()} - {"prometheus"})
    without = []
    for job in jobs:
        names = prometheus.get("/api/v1/label/__name__/values", **{"match[]": f'{{job="{job}"}}'})
        # Every target has ``up`` and ``scrape_*``: they say nothing of the job's own.
        own = {name for name in names if name != "up" and not name.startswith("scrape_")}
        if not words & own:
            without.append(job)
    assert not without, f"jobs no dashboard panel shows: {without}"


def test_dashboards_are_importable() -> None:
    """Each dashboard has a uid and the datasource variable, used by every panel and query."""
    assert DASHBOARDS, "no dashboard under deploy/grafana"
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        assert dashboard.get("uid"), f"{path.name} has no uid"
        variables = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
        assert [v["type"] for v in variables] == ["datasource"], f"{path.name}: no $datasource"
        for panel in dashboard["panels"]:
            uses = [panel.get("datasource")] + [t["datasource"] for t in panel.get("targets", [])]
            expected = {"type": "prometheus", "uid": "${datasource}"}
            assert all(use == expected for use in uses if panel["type"] != "row"), panel["title"]
