"""From polled records to a batch: valid entries keep their record, poison its reason.

No services: records are built as aiokafka hands them to the worker.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.batch import Batch
from schemas import DEFAULT_LIMITS, DeviceReplacement, Stream, VehicleMeterLink

TOPIC = "telemetry.vehicle.v1"
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
#: When Kafka took the records: what readings are judged against.
ACCEPTED = NOW


def record(
    partition: int, offset: int, value: bytes, topic: str = TOPIC
) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=int(ACCEPTED.timestamp() * 1000),
        timestamp_type=1,  # LogAppendTime, as on the project's data topics
        key=b"k%d" % offset,
        value=value,
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=len(value),
        headers=(),
    )


def vehicle(vehicle_id: str, minutes_ago: int, kwh: float = 0.5) -> bytes:
    stamp = NOW - timedelta(minutes=minutes_ago)
    return orjson.dumps(
        {
            "vehicleId": vehicle_id,
            "soc": 50,
            "kwhDeliveredDc": kwh,
            "batteryTemp": 30,
            "timestamp": stamp.isoformat().replace("+00:00", "Z"),
        }
    )


def polled() -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
    return {
        TopicPartition(TOPIC, 0): [
            record(0, 10, vehicle("B1", 5)),
            record(0, 11, b"{not json"),
            record(0, 12, vehicle("B1", 1, kwh=0.25)),
        ],
        TopicPartition(TOPIC, 2): [
            record(2, 40, vehicle("B2", 3)),
            record(
                2,
                41,
                b'{"meterId": "M", "kwhConsumedAc": 1, "voltage": 230,'
                b' "timestamp": "2026-01-01T00:00:00Z"}',
            ),
        ],
    }


def test_decode_keeps_each_valid_event_with_its_record_and_each_poison_with_why() -> None:
    batch = Batch.decode(polled(), Stream.VEHICLE, DEFAULT_LIMITS)
    assert batch.offsets == {TopicPartition(TOPIC, 0): 13, TopicPartition(TOPIC, 2): 42}
    assert batch.records == 5
    assert [(source.partition, source.offset) for _, source in batch.readings] == [
        (0, 10),
        (0, 12),
        (2, 40),
    ]
    assert [row[:2] for row, _ in batch.readings] == [
        ("B1", NOW - timedelta(minutes=5)),
        ("B1", NOW - timedelta(minutes=1)),
        ("B2", NOW - timedelta(minutes=3)),
    ]
    assert batch.readings[1][0][3] == 0.25
    assert batch.newest == NOW - timedelta(minutes=1)
    assert [(p.partition, p.offset, p.error_class) for p in batch.poison] == [
        (0, 11, "json"),
        (2, 41, "shape"),
    ]
    assert batch.poison[0].value == b"{not json"
    assert batch.poison[0].key == b"k11"
    assert "meter event does not belong on the vehicle stream" in batch.poison[1].reason
    assert batch.links == []


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_links_decode_to_links() -> None:
    value = orjson.dumps({"vehicleId": "V", "meterId": "M", "validFrom": iso(NOW)})
    source = record(1, 7, value, topic="fleet.links.v1")
    batch = Batch.decode(
        {TopicPartition("fleet.links.v1", 1): [source]}, Stream.LINKS, DEFAULT_LIMITS
    )
    assert batch.readings == []
    assert batch.poison == []
    assert [(type(link), record) for link, record in batch.links] == [(VehicleMeterLink, source)]
    assert batch.newest is None


def test_replacements_decode_on_the_links_stream() -> None:
    swap = orjson.dumps({"vehicleId": "V", "replacedAt": iso(NOW)})
    bad = orjson.dumps({"vehicleId": "V", "meterId": "M", "replacedAt": iso(NOW)})
    sources = [
        record(1, 7, swap, topic="fleet.links.v1"),
        record(1, 8, bad, topic="fleet.links.v1"),
    ]
    batch = Batch.decode(
        {TopicPartition("fleet.links.v1", 1): sources}, Stream.LINKS, DEFAULT_LIMITS
    )
    assert [(type(event), r) for event, r in batch.links] == [(DeviceReplacement, sources[0])]
    assert [p.reason for p in batch.poison] == ["event: send exactly one of meterId and vehicleId"]


def test_a_link_is_judged_at_its_records_time_so_a_replay_is_never_refused_later() -> None:
    accepted = NOW - timedelta(days=80)
    value = orjson.dumps(
        {
            "vehicleId": "V",
            "meterId": "M",
            "validFrom": iso(accepted - timedelta(days=20)),  # 100 days before now
            "validTo": iso(accepted + timedelta(days=366)),
        }
    )
    early = replace(
        record(1, 7, value, topic="fleet.links.v1"), timestamp=int(accepted.timestamp() * 1000)
    )
    late = record(1, 8, value, topic="fleet.links.v1")  # the same event, accepted now
    batch = Batch.decode(
        {TopicPartition("fleet.links.v1", 1): [early, late]}, Stream.LINKS, DEFAULT_LIMITS
    )
    assert [source for _, source in batch.links] == [early]
    assert [(p.offset, p.error_class) for p in batch.poison] == [(8, "validation")]
    assert batch.poison[0].reason.startswith("validFrom:")
    assert "older than the history's retention of 90 days" in batch.poison[0].reason


def test_only_drops_the_records_of_revoked_partitions_without_decoding_again() -> None:
    batch = Batch.decode(polled(), Stream.VEHICLE, DEFAULT_LIMITS)
    kept = batch.only({TopicPartition(TOPIC, 2), TopicPartition(TOPIC, 5)})
    assert kept.offsets == {TopicPartition(TOPIC, 2): 42}
    assert [source.offset for _, source in kept.readings] == [40]
    assert [p.offset for p in kept.poison] == [41]
    assert kept.records == 2
    assert kept.newest == NOW - timedelta(minutes=3)
    # The same entry objects: nothing was decoded again.
    assert kept.readings[0] is batch.readings[2]
    nothing = batch.only(set())
    assert (nothing.offsets, nothing.readings, nothing.poison, nothing.records) == ({}, [], [], 0)
    assert nothing.newest is None
