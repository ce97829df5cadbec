"""Every panel query of the Grafana dashboards returns data from a live Prometheus.

Grafana itself is not run: its queries are. A Prometheus on the project's own
scrape config and rules scrapes real processes (see :mod:`tests.monitoring`):
the gateway, the three consumers, maintenance, the analytics API,
``prometheus-postgres-exporter`` on this module's database and the session
broker's JMX exporter agent. A short simulated fleet, invalid
events, a duplicate and a poison record go through them; then each panel
query runs against Prometheus's HTTP API and must answer at least one series.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx2 as httpx
import pytest

from bench.gateway_process import GatewayProcess
from deploy.local.kafka_tools import produce
from deploy.local.services import ROOT
from tests.conftest import API_KEY, ModuleEnv, wait_for
from tests.monitoring import Prometheus, start_monitored

DASHBOARDS = sorted((ROOT / "deploy" / "grafana").rglob("*.json"))
#: Grafana's interval variables, fixed: 1 s scrapes make a minute hold many samples.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
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


@pytest.fixture(scope="module")
def monitored(
    env: ModuleEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Prometheus, str, str]]:
    """Every component running and scraped; yields Prometheus, the gateway's URL and key.

    Waits until Prometheus reports every target of its config up.
    """
    stack = env.services.stack
    assert stack is not None, "the broker's metrics come from the local stack's JMX agent"
    with GatewayProcess(env.services.kafka_bootstrap, env.topics, workers=1) as gateway:
        running = start_monitored(
            env,
            tmp_path_factory.mktemp("prometheus"),
            gateway_port=gateway.port,
            kafka_jmx_port=stack.kafka_jmx_port,
        )
        yield running.prometheus, gateway.url, gateway.api_key


def _send_load(env: ModuleEnv, gateway_url: str, gateway_key: str, analytics_url: str) -> None:
    """A short simulated fleet, invalid events, a duplicate, poison, analytics reads, and
    a meter register that resets, then a late reading of it."""
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
    # A meter register that goes down (a reset), then, once both are stored, a
    # reading between them (late).
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)

    def register(seconds: int, kwh: float) -> dict[str, Any]:
        at = (start + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
        return {"meterId": "dash-reg", "kwhRegisterAc": kwh, "timestamp": at}

    newest = register(60, 40.0)
    with httpx.Client(base_url=gateway_url, headers=auth) as gateway:
        answer = gateway.post("/v1/ingest/batch", json=[register(0, 100.0), newest])
        assert answer.status_code == 202
    readers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=analytics_url, headers=readers) as analytics:
        # Stored once the consumer committed it: then both routes answer 200.
        for path in ("/v1/vehicles/dash-dup/live", "/v1/analytics/performance/dash-dup"):
            wait_for(partial(_answers_200, analytics, path), timeout_s=30)
        wait_for(partial(_live_at, analytics, "dash-reg", newest["timestamp"]), timeout_s=30)
    with httpx.Client(base_url=gateway_url, headers=auth) as gateway:
        assert gateway.post("/v1/ingest", json=register(30, 101.0)).status_code == 202


def _live_at(client: httpx.Client, meter: str, timestamp: str) -> bool:
    """Whether the meter's live status is its reading at ``timestamp``."""
    answer = client.get(f"/v1/meters/{meter}/live")
    return answer.status_code == 200 and answer.json()["timestamp"] == timestamp


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
