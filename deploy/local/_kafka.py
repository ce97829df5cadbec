"""A single-node Apache Kafka broker (KRaft, combined broker+controller) without Docker.

The broker runs from the Maven Central jars of kafka_2.13 (resolved once by ``mvn``
into a per-user cache), with a config generated into ``<dir>/kafka``. It counts as
ready only once a client has really produced and consumed a message: a listening
port alone says nothing about the metadata quorum or partition leadership.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import _procs
from _common import EXIT_PREREQ, REPO_ROOT, Layout, StackError, say, tail

# The stack runs as a plain script; the contract's topic configuration is in the repository.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from schemas.topics import (
    DEFAULT_DLQ_RETENTION_DAYS,
    DEFAULT_PARTITIONS,
    DEFAULT_RETENTION_DAYS,
    DEFAULT_TOPICS,
    DLQ_PARTITIONS,
    dlq_topic,
    topic_config,
)

KAFKA_VERSION = "4.1.1"
#: io.prometheus.jmx:jmx_prometheus_javaagent, the broker's /metrics (rules: JMX_RULES).
JMX_EXPORTER_VERSION = "1.0.1"
JMX_RULES = REPO_ROOT / "deploy" / "prometheus" / "kafka-jmx.yml"
#: The port file (see `_procs.write_pid`) of the broker's metrics endpoint.
JMX_NAME = "kafka-jmx"
POM = REPO_ROOT / "deploy" / "local" / "kafka" / "pom.xml"
LOG4J2_CONFIG = REPO_ROOT / "deploy" / "local" / "kafka" / "log4j2.properties"
NAME = "kafka"

#: The project's topics, each with a dead-letter twin; partitions and configuration
#: are the contract's (schemas.topics). Retention in days can be moved with
#: STACK_TOPIC_RETENTION_DAYS and STACK_DLQ_RETENTION_DAYS.
PROJECT_TOPICS = DEFAULT_TOPICS.all()
HEALTH_TOPIC = "_stack.healthcheck"

READY_TIMEOUT_S = 90.0
STOP_GRACE_S = 30.0

#: Kafka's error code for "topic already exists" (a lost race is not an error).
_TOPIC_ALREADY_EXISTS = 36


def cache_root() -> Path:
    """The per-user cache for this Kafka version: ``$XDG_CACHE_HOME/energy-ingest/kafka-X``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "energy-ingest" / f"kafka-{KAFKA_VERSION}"


def ensure_jars() -> Path:
    """Return the folder holding the broker's jars, fetching them with Maven the first time."""
    libs = cache_root() / "libs"
    argv = ["-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime"]
    _fetch_once(
        cache_root(),
        [*argv, f"-DoutputDirectory={libs}"],
        libs / f"kafka_2.13-{KAFKA_VERSION}.jar",
        f"Kafka {KAFKA_VERSION} jars",
    )
    return libs


def ensure_jmx_agent() -> Path:
    """Return the Prometheus JMX exporter agent's jar, fetching it with Maven the first time."""
    root = cache_root().parent / f"jmx-exporter-{JMX_EXPORTER_VERSION}"
    jar = root / "lib" / f"jmx_prometheus_javaagent-{JMX_EXPORTER_VERSION}.jar"
    artifact = f"io.prometheus.jmx:jmx_prometheus_javaagent:{JMX_EXPORTER_VERSION}"
    argv = ["dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={jar.parent}"]
    _fetch_once(root, argv, jar, f"the JMX exporter agent {JMX_EXPORTER_VERSION}")
    return jar


def _fetch_once(root: Path, mvn_args: list[str], expected: Path, what: str) -> None:
    """Run ``mvn <mvn_args>`` once (cached in ``root``), checking that it made ``expected``.

    ``expected``'s folder is emptied first: it is the download's, never ``root``.

    The download is marked complete by a stamp file written only after ``mvn``
    succeeded, so an interrupted download is redone from scratch. A file lock
    serialises concurrent stacks that share the cache.
    """
    stamp = root / "complete.stamp"
    if stamp.exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():  # another stack fetched it while we waited
            return
        if shutil.which("mvn") is None:
            raise StackError(
                f"mvn not found: it is needed once to fetch {what} "
                "(install it: apt-get install -y maven)",
                code=EXIT_PREREQ,
            )
        say(f"kafka: fetching {what} from Maven Central (once)...")
        shutil.rmtree(expected.parent, ignore_errors=True)
        result = subprocess.run(
            ["mvn", "-q", "-B", *mvn_args], capture_output=True, text=True, check=False
        )
        if result.returncode != 0 or not expected.exists():
            output = (result.stdout + result.stderr).strip().splitlines()
            raise StackError(
                f"fetching {what} with mvn failed (exit {result.returncode})",
                detail="\n".join("    " + line for line in output[-20:]),
            )
        stamp.write_text(f"{expected.name}\n", encoding="utf-8")


def check_java() -> None:
    """Raise a prerequisite error unless ``java`` 17 or newer is on PATH (Kafka 4 needs 17)."""
    if shutil.which("java") is None:
        raise StackError(
            "java not found: Kafka needs a Java 17+ runtime "
            "(install it: apt-get install -y openjdk-17-jre-headless)",
            code=EXIT_PREREQ,
        )
    out = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)', out)
    if match is None or int(match.group(1)) < 17:
        first = out.splitlines()[0] if out else "unknown version"
        raise StackError(f"Kafka {KAFKA_VERSION} needs Java 17+, found: {first}", code=EXIT_PREREQ)


def write_config(layout: Layout, port: int, controller_port: int) -> None:
    """(Re)write ``server.properties`` for a one-node KRaft cluster on 127.0.0.1.

    Every replication factor and min ISR is 1, since there is one broker; topics are
    only created explicitly (auto-creation would hide typos in topic names).
    """
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": (
            f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"
        ),
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(layout.kafka_data),
        "num.partitions": str(DEFAULT_PARTITIONS),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # A local stack has one consumer per group: waiting for more only slows tests.
        "group.initial.rebalance.delay.ms": "0",
        # Workers' sessions are short (CONSUMER_SESSION_TIMEOUT_MS, 3 s) so that a
        # killed worker's partitions move fast; the broker's floor is 6 s unless set.
        "group.min.session.timeout.ms": "1000",
        "auto.create.topics.enable": "false",
    }
    lines = ["# Generated by deploy/local/stack.py on every start; edits are lost."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    layout.kafka_config.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _java(libs: Path, *args: str, jvm: Sequence[str] = ()) -> list[str]:
    """A ``java`` command line with the broker's classpath and our log4j2 config."""
    return [
        "java",
        *jvm,
        f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
        "-cp",
        f"{libs}/*",  # expanded by the JVM, not by a shell
        *args,
    ]


def format_storage_once(libs: Path, layout: Layout) -> None:
    """Format the KRaft log dir with a fresh cluster id, unless it is formatted already.

    ``meta.properties`` is the mark of a finished format; a data folder without it
    is the remains of an interrupted format and is wiped first.
    """
    if (layout.kafka_data / "meta.properties").exists():
        return
    shutil.rmtree(layout.kafka_data, ignore_errors=True)
    uuid = _run_tool(libs, "random-uuid").strip().splitlines()[-1]
    _run_tool(libs, "format", "--standalone", "-t", uuid, "-c", str(layout.kafka_config))
    say(f"kafka: formatted storage (cluster id {uuid})")


def _run_tool(libs: Path, *args: str) -> str:
    """Run ``kafka.tools.StorageTool`` and return its stdout; raise on failure."""
    result = subprocess.run(
        _java(libs, "kafka.tools.StorageTool", *args),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise StackError(
            f"kafka StorageTool {args[0]} failed (exit {result.returncode})",
            detail="\n".join("    " + line for line in output[-20:]),
        )
    return result.stdout


def argv_matcher(layout: Layout) -> _procs.ArgvMatcher:
    """Recognise our broker: ``kafka.Kafka`` started with this stack's config file."""
    config = str(layout.kafka_config)

    def matches(argv: list[str]) -> bool:
        return "kafka.Kafka" in argv and argv[-1] == config

    return matches


def running_pid(layout: Layout) -> int | None:
    """The broker's pid if this stack's broker is running (stale pid files are removed)."""
    return _procs.verified_pid(layout.pid_file(NAME), argv_matcher(layout), layout.root)


def start(
    libs: Path, layout: Layout, port: int, env: Mapping[str, str], *, agent: Path, jmx_port: int
) -> int:
    """Launch the broker detached (output to ``logs/kafka.log``) and return its pid.

    The JMX exporter ``agent`` serves the broker's metrics on 127.0.0.1:``jmx_port``.
    Does not wait for readiness: see `wait_ready`, so that PostgreSQL can start
    while the JVM boots.
    """
    jvm = ("-Xms256m", "-Xmx768m", "-XX:+UseG1GC", f"-Dkafka.logs.dir={layout.logs}")
    agent_arg = f"-javaagent:{agent}=127.0.0.1:{jmx_port}:{JMX_RULES}"
    argv = _java(libs, "kafka.Kafka", str(layout.kafka_config), jvm=(*jvm, agent_arg))
    pid = _procs.spawn_detached(
        argv, log=layout.log(NAME), env=env, cwd=layout.kafka, banner="starting kafka"
    )
    _procs.write_pid(layout.pid_file(NAME), pid, layout.port_file(NAME), port)
    layout.port_file(JMX_NAME).write_text(f"{jmx_port}\n", encoding="utf-8")
    return pid


def stop(layout: Layout) -> None:
    """Stop this stack's broker if running (SIGTERM, 30 s grace, then SIGKILL)."""
    pid = running_pid(layout)
    if pid is None:
        say(f"{NAME}: not running")
    else:
        killed = _procs.stop([pid], grace=STOP_GRACE_S)
        say(f"{NAME}: {'killed after 30 s' if killed else 'stopped'} (pid {pid})")
    layout.pid_file(NAME).unlink(missing_ok=True)
    layout.port_file(NAME).unlink(missing_ok=True)
    layout.port_file(JMX_NAME).unlink(missing_ok=True)


def wait_ready(layout: Layout, pid: int, port: int) -> None:
    """Block until a client can produce to and consume from the broker (90 s at most).

    Raises with the tail of ``kafka.log`` if the JVM exits or the deadline passes.
    """
    # aiokafka logs every refused connection while the broker boots; the outcome
    # of the whole wait is what matters, and it is reported below.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL + 1)
    bootstrap = f"127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_error = "the port never opened"
    while time.monotonic() < deadline:
        if not _procs.is_alive(pid):
            raise StackError(
                f"kafka exited during startup; see {layout.log(NAME)}",
                detail=tail(layout.log(NAME)),
            )
        if _procs.port_open(port):
            try:
                asyncio.run(asyncio.wait_for(_produce_and_consume(bootstrap), 20.0))
            except Exception as exc:  # noqa: BLE001 (any failure means "not ready yet")
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                return
        time.sleep(0.5)
    raise StackError(
        f"kafka not ready after {READY_TIMEOUT_S:.0f} s ({last_error}); see {layout.log(NAME)}",
        detail=tail(layout.log(NAME)),
    )


async def _produce_and_consume(bootstrap: str) -> None:
    """Round-trip one random message through ``_stack.healthcheck`` with acks=all."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    await _create_missing(bootstrap, {HEALTH_TOPIC: 1})
    payload = secrets.token_bytes(16)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=5000)
    await producer.start()
    try:
        sent: Any = await producer.send_and_wait(HEALTH_TOPIC, payload)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=5000
    )
    await consumer.start()
    try:
        partition = TopicPartition(HEALTH_TOPIC, sent.partition)
        consumer.assign([partition])
        consumer.seek(partition, sent.offset)
        record: Any = await asyncio.wait_for(consumer.getone(), 10.0)
    finally:
        await consumer.stop()
    if record.value != payload:
        raise RuntimeError("consumed a different message than the one produced")


async def _create_missing(
    bootstrap: str,
    topics: Mapping[str, int],
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> list[str]:
    """Create those of ``topics`` (name -> partitions, replication 1) that do not exist.

    Topics named in ``configs`` get that configuration, existing ones too.
    Returns the names created. A topic created concurrently by someone else
    counts as existing.
    """
    configs = configs or {}
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [name for name in topics if name in existing and name in configs]
        if present:
            await admin.alter_configs(
                [
                    ConfigResource(ConfigResourceType.TOPIC, name, configs=dict(configs[name]))
                    for name in present
                ]
            )
        missing = [name for name in topics if name not in existing]
        if not missing:
            return []
        response: Any = await admin.create_topics(
            [
                NewTopic(name, topics[name], 1, topic_configs=dict(configs.get(name, {})))
                for name in missing
            ]
        )
        for error in response.to_object()["topic_errors"]:
            if error["error_code"] not in (0, _TOPIC_ALREADY_EXISTS):
                raise StackError(
                    f"creating topic {error['topic']} failed: Kafka error "
                    f"{error['error_code']} {error.get('error_message') or ''}".rstrip()
                )
        return missing
    finally:
        await admin.close()


def ensure_topics(port: int) -> list[str]:
    """Create the project topics and their ``.dlq`` twins if missing; return those created.

    Topics that exist get the project's configuration again (retention,
    timestamp type), so a stack made by an older version is brought up to date.
    """
    wanted = dict.fromkeys(PROJECT_TOPICS, DEFAULT_PARTITIONS)
    wanted |= {dlq_topic(name): DLQ_PARTITIONS for name in PROJECT_TOPICS}
    retention = float(os.environ.get("STACK_TOPIC_RETENTION_DAYS", DEFAULT_RETENTION_DAYS))
    dlq_retention = float(os.environ.get("STACK_DLQ_RETENTION_DAYS", DEFAULT_DLQ_RETENTION_DAYS))
    configs = {name: topic_config(name, retention, dlq_retention) for name in wanted}
    return asyncio.run(_create_missing(f"127.0.0.1:{port}", wanted, configs))
