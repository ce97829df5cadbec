"""The real services answer: a record goes through the broker, a row through the database."""

from __future__ import annotations

import uuid

from deploy.local.kafka_tools import create_topics, delete_topics, produce, read_all
from tests.conftest import ModuleEnv


def test_kafka_round_trip(env: ModuleEnv) -> None:
    topic = f"{env.name}.smoke"
    create_topics(env.services.kafka_bootstrap, [topic], partitions=1)
    try:
        payload = uuid.uuid4().bytes
        produce(env.services.kafka_bootstrap, topic, [(b"k", payload)])
        records = read_all(env.services.kafka_bootstrap, topic, expected=1)
        assert [(r.key, r.value) for r in records] == [(b"k", payload)]
    finally:
        delete_topics(env.services.kafka_bootstrap, [topic])


def test_postgres_round_trip_and_migrations(env: ModuleEnv) -> None:
    with env.connect() as conn:
        conn.execute(
            "INSERT INTO meter_live_status (meter_id, recorded_at, kwh_consumed_ac, voltage)"
            " VALUES ('smoke', '2026-01-01T00:00:00Z', 1.5, 230)"
        )
        row = conn.execute(
            "SELECT kwh_consumed_ac, voltage FROM meter_live_status WHERE meter_id = 'smoke'"
        ).fetchone()
    assert row == (1.5, 230.0)
    tables = {
        r[0] for r in env.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {
        "meter_readings_history",
        "vehicle_readings_history",
        "meter_live_status",
        "vehicle_live_status",
        "vehicle_meter_links",
    } <= tables
