"""What the gateway's lifespan owns, shared by the routes through ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

from ingest_gateway.admission import InFlight
from ingest_gateway.publisher import KafkaPublisher
from ingest_gateway.settings import GatewaySettings
from schemas import TopicNames, ValidationLimits


@dataclass(frozen=True, slots=True)
class GatewayState:
    """Settings, derived config, Kafka publisher and in-flight bounds of one app instance."""

    settings: GatewaySettings
    publisher: KafkaPublisher
    topics: TopicNames
    limits: ValidationLimits
    in_flight: InFlight
