"""A deterministic EV fleet: D vehicles each charged from its own meter, one heartbeat a minute.

``energy-simulate`` (``python -m deploy.simulator``) sends it to the gateway or
to Kafka; :class:`GroundTruth` knows what the analytics API must answer for
exactly the events that were accepted.
"""

from deploy.simulator.fleet import Fleet, FleetConfig, SimEvent, accelerated_window, iso_utc
from deploy.simulator.physics import VehicleModel, VehicleProfile
from deploy.simulator.run import Runner, RunStats
from deploy.simulator.targets import Delivery, HttpTarget, KafkaTarget, Target
from deploy.simulator.truth import GroundTruth, VehicleTotals

__all__ = [
    "Delivery",
    "Fleet",
    "FleetConfig",
    "GroundTruth",
    "HttpTarget",
    "KafkaTarget",
    "RunStats",
    "Runner",
    "SimEvent",
    "Target",
    "VehicleModel",
    "VehicleProfile",
    "VehicleTotals",
    "accelerated_window",
    "iso_utc",
]
