#!/usr/bin/env bash
# One-shot topic creation for docker-compose.yml (service kafka-init), with the
# Kafka image's own CLI. The same topics, partition counts and configuration as the
# local stack (schemas/topics.py, topic_config): every project topic with 12
# partitions and RETENTION_DAYS (7) of retention; its `.dlq` twin with 3 partitions
# and DLQ_RETENTION_DAYS (30); LogAppendTime on all; replication factor 1 (one broker). Auto
# topic creation is off on the broker, so nothing can publish before this has run.
#
# Idempotent (--if-not-exists): safe on every `docker compose up`. An existing topic
# keeps its partition count (growing it would move device keys to other partitions)
# but gets the configuration again; the summary at the end shows what exists.
set -euo pipefail

BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
TOPICS="${TOPICS:-telemetry.meter.v1 telemetry.vehicle.v1 fleet.links.v1}"
PARTITIONS="${PARTITIONS:-12}"
DLQ_PARTITIONS="${DLQ_PARTITIONS:-3}"
REPLICATION_FACTOR="${REPLICATION_FACTOR:-1}"
RETENTION_DAYS="${RETENTION_DAYS:-7}"
DLQ_RETENTION_DAYS="${DLQ_RETENTION_DAYS:-30}"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"
DAY_MS=86400000

# The broker stamps each record (LogAppendTime), and the consumers judge a reading's
# age against that stamp, never against a host's clock.
DATA_CONFIG="retention.ms=$((RETENTION_DAYS * DAY_MS)),cleanup.policy=delete,message.timestamp.type=LogAppendTime"
DLQ_CONFIG="retention.ms=$((DLQ_RETENTION_DAYS * DAY_MS)),cleanup.policy=delete,message.timestamp.type=LogAppendTime"

create() {
    local topic="$1" partitions="$2" config="$3" attempt
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        if "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
            --topic "$topic" --partitions "$partitions" \
            --replication-factor "$REPLICATION_FACTOR" \
            $(printf -- '--config %s ' ${config//,/ }) &&
            "$KAFKA_BIN/kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" --alter \
                --entity-type topics --entity-name "$topic" --add-config "$config"; then
            return 0
        fi
        echo "kafka-init: creating $topic failed (attempt $attempt), retrying in 3 s" >&2
        sleep 3
    done
    echo "kafka-init: could not create $topic" >&2
    return 1
}

for topic in $TOPICS; do
    create "$topic" "$PARTITIONS" "$DATA_CONFIG"
    create "$topic.dlq" "$DLQ_PARTITIONS" "$DLQ_CONFIG"
done

echo "kafka-init: topics in place:"
for topic in $TOPICS; do
    for name in "$topic" "$topic.dlq"; do
        "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --describe --topic "$name" \
            | grep -E '^Topic:' || true
    done
done
