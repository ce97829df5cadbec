#!/usr/bin/env bash
# One-shot topic creation for docker-compose.yml (service kafka-init), with the
# Kafka image's own CLI. The same topics and partition counts as the local stack
# (deploy/local/_kafka.py): every project topic with 12 partitions, its `.dlq`
# twin with 3, replication factor 1 (one broker). Auto topic creation is off on the
# broker, so nothing can publish before this has run.
#
# Idempotent (--if-not-exists): safe on every `docker compose up`. An existing topic
# is left as it is, even with another partition count (growing the count would move
# device keys to other partitions); the summary at the end shows what exists.
set -euo pipefail

BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
TOPICS="${TOPICS:-telemetry.meter.v1 telemetry.vehicle.v1 fleet.links.v1}"
PARTITIONS="${PARTITIONS:-12}"
DLQ_PARTITIONS="${DLQ_PARTITIONS:-3}"
REPLICATION_FACTOR="${REPLICATION_FACTOR:-1}"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"

create() {
    local topic="$1" partitions="$2" attempt
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        if "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
            --topic "$topic" --partitions "$partitions" \
            --replication-factor "$REPLICATION_FACTOR"; then
            return 0
        fi
        echo "kafka-init: creating $topic failed (attempt $attempt), retrying in 3 s" >&2
        sleep 3
    done
    echo "kafka-init: could not create $topic" >&2
    return 1
}

for topic in $TOPICS; do
    create "$topic" "$PARTITIONS"
    create "$topic.dlq" "$DLQ_PARTITIONS"
done

echo "kafka-init: topics in place:"
for topic in $TOPICS; do
    for name in "$topic" "$topic.dlq"; do
        "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --describe --topic "$name" \
            | grep -E '^Topic:' || true
    done
done
