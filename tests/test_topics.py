"""The topics' configuration: explicit retention, and the broker's clock on data topics."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas import DEFAULT_TOPICS, dlq_topic
from tests.conftest import ModuleEnv

DAY_MS = 86_400_000


def _configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    async def run() -> dict[str, dict[str, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            responses: list[Any] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics]
            )
        finally:
            await admin.close()
        found: dict[str, dict[str, str]] = {}
        for response in responses:
            for resource in response.to_object()["resources"]:
                found[resource["resource_name"]] = {
                    entry["config_names"]: entry["config_value"]
                    for entry in resource["config_entries"]
                }
        return found

    return asyncio.run(run())


def test_the_stacks_topics_keep_data_7_days_dead_letters_30_and_use_the_brokers_clock(
    env: ModuleEnv,
) -> None:
    """What ``make up`` creates (the test session's stack made these topics the same way)."""
    data = list(DEFAULT_TOPICS.all())
    configs = _configs(env.services.kafka_bootstrap, [*data, *map(dlq_topic, data)])
    for name in data:
        assert configs[name]["retention.ms"] == str(7 * DAY_MS), name
        assert configs[name]["message.timestamp.type"] == "LogAppendTime", name
        assert configs[dlq_topic(name)]["retention.ms"] == str(30 * DAY_MS), name
        assert configs[dlq_topic(name)]["message.timestamp.type"] == "LogAppendTime", name


def test_topics_made_for_tests_are_configured_as_the_stacks(env: ModuleEnv) -> None:
    data = list(env.topics.all())
    configs = _configs(env.services.kafka_bootstrap, [*data, *map(dlq_topic, data)])
    assert {configs[name]["message.timestamp.type"] for name in data} == {"LogAppendTime"}
    assert {configs[dlq_topic(name)]["retention.ms"] for name in data} == {str(30 * DAY_MS)}
