"""Alerts fire on real faults, end to end, through a running Prometheus.

Every component runs and is scraped every second by a Prometheus of this
module's own (:mod:`tests.monitoring`), which evaluates the project's alert
rules (``deploy/prometheus/alerts.yml``) with every duration divided by
`RULE_SPEEDUP`: a minute of a rule (``for:``, range windows, offsets) lasts a
second here, so an alert pending for 2 minutes fires after 2 s. Expressions,
labels and annotations are the project's own.

Each test checks that its alert is not active, causes the fault, waits on
Prometheus's alerts API until the alert fires (printing how long that took),
and, where the rule lets it, removes the fault and waits until it clears.

The gateway publishes to a broker of this module's own (``.stack/test-alerts``
on free ports), which is crashed and restarted; the session's broker, which
the consumers read and other modules share, is never touched.

Not here: the silent-device alerts. Their rules are checked by promtool's
unit tests (``deploy/prometheus/alerts_test.yml``) over series shaped like a
fleet's, and the gauges they read by ``tests/test_silent.py``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx
import orjson
import pytest
import yaml

from bench.gateway_process import GatewayProcess, kafka_topics
from deploy.local import prometheus_config
from deploy.local.kafka_tools import produce
from deploy.local.services import LocalStack, crash_kafka, free_port, local_stack, start_infra
from tests.conftest import ModuleEnv, wait_for
from tests.monitoring import Monitored, Prometheus, start_consumer, start_monitored

#: Rule durations are divided by this: their minutes become seconds.
RULE_SPEEDUP = 60
#: A Prometheus duration (``5m``, ``1h30m``, ``500ms``).
DURATION = re.compile(r"\b(?:\d+(?:ms|[smhdwy]))+\b")
#: Longest wait for an alert to fire or clear: 15 s of rule time at most, plus scrapes
#: and evaluations of 1 s each, on a busy machine.
ALERT_TIMEOUT_S = 30.0
#: Longest wait for the restarted broker to take the gateway's events again.
RECOVERY_TIMEOUT_S = 90.0
#: The status recorded for a post that got no HTTP answer.
NO_ANSWER = 0


def now() -> str:
    """The current second, ISO 8601 UTC."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def own_kafka() -> Iterator[LocalStack]:
    """A broker (and PostgreSQL) of this module's own, on free ports; stopped after."""
    stack = LocalStack("test-alerts", free_port(), free_port(), free_port(), free_port())
    with local_stack(stack):
        yield stack


@pytest.fixture(scope="module")
def monitored(
    env: ModuleEnv, own_kafka: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Monitored, GatewayProcess]]:
    """Every component scraped on the sped-up rules; the gateway publishes to ``own_kafka``."""
    bootstrap = f"127.0.0.1:{own_kafka.kafka_port}"
    # A short publish timeout: the first request of the outage finds out sooner.
    with (
        kafka_topics(bootstrap, env.name) as topics,
        GatewayProcess(
            bootstrap, topics, workers=1, extra_env={"GATEWAY_PUBLISH_TIMEOUT_S": "2"}
        ) as gateway,
    ):
        running = start_monitored(
            env,
            tmp_path_factory.mktemp("prometheus"),
            gateway_port=gateway.port,
            kafka_jmx_port=own_kafka.kafka_jmx_port,
            rule_speedup=RULE_SPEEDUP,
        )
        yield running, gateway


def test_sped_up_rules_differ_from_the_project_s_in_durations_only() -> None:
    source = prometheus_config.PROMETHEUS_DIR / "alerts.yml"
    project = yaml.safe_load(source.read_text(encoding="utf-8"))
    sped_up = yaml.safe_load(prometheus_config.render_rules(source, RULE_SPEEDUP))
    rules = {
        rule.get("alert") or rule["record"]: (rule, fast)
        for group, fast_group in zip(project["groups"], sped_up["groups"], strict=True)
        for rule, fast in zip(group["rules"], fast_group["rules"], strict=True)
    }
    for rule, fast in rules.values():
        assert {k: v for k, v in fast.items() if k not in ("for", "expr")} == {
            k: v for k, v in rule.items() if k not in ("for", "expr")
        }
        assert ("for" in fast) == ("for" in rule)
        assert DURATION.sub("D", fast["expr"]) == DURATION.sub("D", rule["expr"])
    # Minutes became seconds, hours minutes.
    assert rules["EnergyTargetDown"][1]["for"] == "2s"
    assert rules["EnergyConsumerLagGrowing"][1]["expr"].startswith(
        "deriv(energy:consumer_lag_records:sum[15s])"
    )
    assert rules["EnergyMaintenanceFailing"][1]["expr"].startswith(
        "increase(energy_maintenance_failures_total[3m])"
    )
    dead_letters = rules["EnergyConsumerDeadLetters"][1]["expr"]
    assert "[10s]" in dead_letters
    assert "offset 10s" in dead_letters


def wait_firing(prometheus: Prometheus, name: str, since: float, **labels: str) -> dict[str, Any]:
    """The alert ``name`` with ``labels`` once it fires; prints the seconds since ``since``."""
    firing = wait_for(
        lambda: prometheus.alerts(name, "firing", **labels),
        timeout_s=ALERT_TIMEOUT_S,
        interval_s=0.2,
        explain=lambda: f"active alerts: {prometheus.get('/api/v1/alerts')['alerts']}",
    )
    print(f"{name} {labels} fired {time.monotonic() - since:.1f} s after the fault")
    alert: dict[str, Any] = firing[0]
    return alert


def wait_cleared(prometheus: Prometheus, name: str, since: float, **labels: str) -> float:
    """Wait until no alert ``name`` with ``labels`` is active; the monotonic time it was seen so."""
    wait_for(
        lambda: not prometheus.alerts(name, **labels),
        timeout_s=ALERT_TIMEOUT_S,
        interval_s=0.2,
        explain=lambda: f"still active: {prometheus.alerts(name, **labels)}",
    )
    cleared = time.monotonic()
    print(f"{name} {labels} cleared {cleared - since:.1f} s after the fault was removed")
    return cleared


def test_a_stopped_consumer_fires_target_down_and_its_restart_clears_it(
    env: ModuleEnv, monitored: tuple[Monitored, GatewayProcess]
) -> None:
    running = monitored[0]
    prometheus, port = running.prometheus, running.ports["consumer-meter"]
    instance = f"127.0.0.1:{port}"
    assert not prometheus.alerts("EnergyTargetDown", instance=instance)

    running.consumers["meter"].kill()
    running.consumers["meter"].wait()
    killed = time.monotonic()
    alert = wait_firing(prometheus, "EnergyTargetDown", killed, instance=instance)
    assert alert["labels"]["job"] == "energy-consumer"
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == f"energy-consumer target {instance} is down"

    running.consumers["meter"] = start_consumer(env, "meter", port)
    wait_cleared(prometheus, "EnergyTargetDown", time.monotonic(), instance=instance)


def test_a_poison_event_fires_dead_letters_with_its_stream_and_reason(
    env: ModuleEnv, monitored: tuple[Monitored, GatewayProcess]
) -> None:
    prometheus = monitored[0].prometheus
    labels = {"stream": "vehicle", "reason": "validation"}
    assert not prometheus.alerts("EnergyConsumerDeadLetters", **labels)

    # A state of charge over 100: valid JSON that fails validation, sent straight to Kafka.
    poison = {"vehicleId": "alert-V1", "soc": 150, "kwhDeliveredDc": 0.1, "batteryTemp": 30}
    value = orjson.dumps({**poison, "timestamp": now()})
    produce(env.services.kafka_bootstrap, env.topics.vehicle, [(b"alert-V1", value)])
    sent = time.monotonic()
    alert = wait_firing(prometheus, "EnergyConsumerDeadLetters", sent, **labels)
    assert alert["labels"] == {
        "alertname": "EnergyConsumerDeadLetters",
        "severity": "warning",
        **labels,
    }
    summary = "vehicle events sent to the dead-letter topic (validation)"
    assert alert["annotations"]["summary"] == summary


class Devices:
    """What a device posting meter readings to the gateway was answered.

    ``answers`` holds ``(monotonic time of the answer, status)`` of each post
    (`NO_ANSWER` when the request failed).
    """

    def __init__(self) -> None:
        self.answers: list[tuple[float, int]] = []

    def post_until(self, gateway: GatewayProcess, stop: threading.Event) -> None:
        """Post a reading every 0.1 s until ``stop`` is set."""
        auth = {"Authorization": f"Bearer {gateway.api_key}"}
        with httpx.Client(base_url=gateway.url, headers=auth, timeout=10) as client:
            while not stop.wait(0.1):
                reading = {"meterId": "alert-M1", "kwhConsumedAc": 0.1, "voltage": 230}
                try:
                    response = client.post("/v1/ingest", json={**reading, "timestamp": now()})
                except httpx.HTTPError:
                    self.answers.append((time.monotonic(), NO_ANSWER))
                else:
                    self.answers.append((time.monotonic(), response.status_code))

    def statuses(self, start: float, end: float = float("inf")) -> set[int]:
        """The statuses answered between ``start`` and ``end`` (monotonic)."""
        return {status for at, status in self.answers if start <= at <= end}

    def first(self, status: int, after: float) -> float:
        """When ``status`` was first answered after ``after``; 0.0 (falsy) if it was not yet."""
        return next((at for at, got in self.answers if at > after and got == status), 0.0)


@contextmanager
def posting(gateway: GatewayProcess) -> Iterator[Devices]:
    """Devices posting to ``gateway`` in a thread for the duration of the block."""
    devices, stop = Devices(), threading.Event()
    thread = threading.Thread(target=devices.post_until, args=(gateway, stop), daemon=True)
    thread.start()
    try:
        yield devices
    finally:
        stop.set()
        thread.join(timeout=15)


def test_a_kafka_outage_fires_publish_failures_until_kafka_is_back(
    own_kafka: LocalStack, monitored: tuple[Monitored, GatewayProcess]
) -> None:
    prometheus, gateway = monitored[0].prometheus, monitored[1]
    name = "EnergyGatewayPublishFailures"
    assert not prometheus.alerts(name)

    # The broker restarts in a thread: the devices keep posting, and this one watching.
    with posting(gateway) as devices, ThreadPoolExecutor(1) as restarter:
        started = time.monotonic()
        wait_for(lambda: devices.first(202, after=started))
        crash_kafka(own_kafka)
        crashed = time.monotonic()
        try:
            alert = wait_firing(prometheus, name, crashed)
            assert devices.statuses(crashed, time.monotonic()) == {503}
        finally:
            restarted = restarter.submit(start_infra, own_kafka)
        assert alert["labels"]["severity"] == "critical"
        cause = alert["labels"]["cause"]
        summary = f"Gateway answers 503: Kafka does not acknowledge ({cause})"
        assert alert["annotations"]["summary"] == summary
        back = wait_for(lambda: devices.first(202, after=crashed), timeout_s=RECOVERY_TIMEOUT_S)
        # Refused until Kafka took events again, and alerting all that time.
        assert devices.statuses(crashed, back - 1e-6) == {503}
        causes = sorted(firing["labels"]["cause"] for firing in prometheus.alerts(name, "firing"))
        assert causes, "cleared before Kafka was back"
        print(f"Kafka took events again {back - crashed:.1f} s after the crash; firing: {causes}")
        cleared = wait_cleared(prometheus, name, back)
        assert devices.statuses(back, cleared) == {202}
        restarted.result()
