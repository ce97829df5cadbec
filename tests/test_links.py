"""Vehicle-to-meter links: one answer for any arrival order, and no meter counted twice.

Every link event is a claim; the effective links are a function of the set of
claims (see ``consumers/links.py``). :func:`expected_links` computes that
function by brute force, and the tests check that the database agrees with it
for shuffled streams, however they are split into batches and whichever
worker writes them.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from consumers.batch import Batch
from consumers.connection import WriterConnection
from consumers.links import LinkSink
from consumers.migrate import SQL_DIR, apply_migrations
from consumers.sink import WriteResult
from deploy.local.kafka_tools import produce, read_all
from deploy.local.services import create_database, drop_database, with_database
from schemas import DLQ_HEADER_ERROR_CLASS, DLQ_HEADER_REASON, Stream, VehicleMeterLink, dlq_topic
from tests.conftest import ModuleEnv, wait_for, write_batches

#: Link times of the shuffled streams: whole hours two days ago, inside every bound.
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)

#: (vehicle, meter, valid_from, valid_to) of one effective link, or of one claim.
Link = tuple[str, str, datetime, datetime | None]


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def link(
    vehicle: str, meter: str, start: datetime, end: datetime | None = None
) -> VehicleMeterLink:
    return VehicleMeterLink(vehicle_id=vehicle, meter_id=meter, valid_from=start, valid_to=end)


def claims_of(
    events: Sequence[VehicleMeterLink],
) -> dict[tuple[str, str, datetime], datetime | None]:
    """One claim per (vehicle, meter, validFrom); its end is the earliest explicit ``validTo``."""
    claims: dict[tuple[str, str, datetime], datetime | None] = {}
    for e in events:
        key = (e.vehicle_id, e.meter_id, e.valid_from)
        ends = [end for end in (claims.get(key), e.valid_to) if end is not None]
        claims[key] = min(ends) if ends else None
    return claims


def expected_links(events: Sequence[VehicleMeterLink]) -> set[Link]:
    """The effective links of ``events``, brute force, straight from the rule.

    A claim ends at the earliest of its own ``validTo`` and the next later
    ``validFrom`` of any claim of the same vehicle or of the same meter. Two
    claims starting at the same instant on one vehicle (other meters) or on one
    meter (other vehicles) are contested: neither is in effect.
    """
    claims = claims_of(events)
    effective: set[Link] = set()
    for (vehicle, meter, start), end in claims.items():
        contested = any(
            s == start and (v == vehicle) != (m == meter)
            for v, m, s in claims
            if (v, m) != (vehicle, meter)
        )
        if contested:
            continue
        later = [s for v, m, s in claims if s > start and (v == vehicle or m == meter)]
        ends = [x for x in (end, min(later, default=None)) if x is not None]
        effective.add((vehicle, meter, start, min(ends) if ends else None))
    return effective


def random_case(rng: random.Random) -> list[VehicleMeterLink]:
    """Link events over three vehicles and three meters on a coarse grid of instants.

    The grid makes same-instant contests, shared meters, replays and the same
    claim with other ends common; open and closed links are mixed.
    """
    events = []
    for _ in range(rng.randrange(4, 12)):
        start = rng.randrange(0, 6)
        end = rng.choice([None, None, start + rng.randrange(1, 4)])
        events.append(
            link(
                f"V{rng.randrange(1, 4)}",
                f"M{rng.randrange(1, 4)}",
                at(start),
                None if end is None else at(end),
            )
        )
    # Replays (at-least-once delivery), and the same claim ending elsewhere.
    for e in rng.sample(events, k=min(len(events), 3)):
        events.append(e)
        events.append(
            link(
                e.vehicle_id,
                e.meter_id,
                e.valid_from,
                e.valid_from + timedelta(hours=rng.randrange(1, 5)),
            )
        )
    return events


def renamed(events: Sequence[VehicleMeterLink], prefix: str) -> list[VehicleMeterLink]:
    """``events`` with every vehicle and meter id prefixed: one private namespace per run."""
    return [
        e.model_copy(update={"vehicle_id": prefix + e.vehicle_id, "meter_id": prefix + e.meter_id})
        for e in events
    ]


def stored_links(env: ModuleEnv, prefix: str, table: str = "vehicle_meter_links") -> set[Link]:
    """The effective links (or the claims) of vehicles named ``prefix...``, without the prefix."""
    rows = env.query(
        f"SELECT vehicle_id, meter_id, valid_from, valid_to FROM {table}"  # noqa: S608 -- test constants
        " WHERE starts_with(vehicle_id, %s)",
        (prefix,),
    )
    n = len(prefix)
    return {(v[n:], m[n:], start, end) for v, m, start, end in rows}


def stored_claims(env: ModuleEnv, prefix: str) -> set[Link]:
    """The claims of vehicles named ``prefix...``, without the prefix."""
    return stored_links(env, prefix, "vehicle_meter_link_claims")


def double_claims(env: ModuleEnv) -> list[tuple[Any, ...]]:
    """Pairs of effective links that claim one meter (or one vehicle) at the same instant."""
    return env.query(
        "SELECT a.vehicle_id, a.meter_id, a.valid_from, b.vehicle_id, b.meter_id, b.valid_from"
        " FROM vehicle_meter_links a JOIN vehicle_meter_links b"
        "   ON (a.meter_id = b.meter_id OR a.vehicle_id = b.vehicle_id)"
        "  AND (a.vehicle_id, a.meter_id, a.valid_from) < (b.vehicle_id, b.meter_id, b.valid_from)"
        "  AND tstzrange(a.valid_from, a.valid_to) && tstzrange(b.valid_from, b.valid_to)"
    )


def apply_runs(env: ModuleEnv, runs: list[list[list[VehicleMeterLink]]]) -> list[list[WriteResult]]:
    """Write each run's batches through one real :class:`LinkSink`, as a links worker does."""

    async def run() -> list[list[WriteResult]]:
        async with WriterConnection(env.writer_url) as db:
            sink = LinkSink(db)
            results = []
            for batches in runs:
                results.append(
                    [
                        await sink.write(
                            Batch(offsets={}, links=[(e, f"{b}:{i}") for i, e in enumerate(batch)])
                        )
                        for b, batch in enumerate(batches)
                    ]
                )
            return results

    return asyncio.run(run())


def split(rng: random.Random, events: list[VehicleMeterLink]) -> list[list[VehicleMeterLink]]:
    """``events`` in order, cut into one to four batches at random places."""
    cuts = sorted(rng.sample(range(1, len(events)), k=min(len(events) - 1, rng.randrange(0, 4))))
    return [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]


#: Two open links for one vehicle, and a meter moving to a second vehicle while
#: still linked to the first: the streams that depended on arrival order.
FIXED_CASES = [
    [link("V1", "M1", at(0)), link("V1", "M2", at(2))],
    [link("V1", "M1", at(0)), link("V2", "M1", at(1)), link("V1", "M2", at(3), at(5))],
    [link("V1", "M1", at(0)), link("V1", "M2", at(0)), link("V2", "M2", at(1))],
]


def test_any_arrival_order_and_batching_gives_the_same_links(env: ModuleEnv) -> None:
    rng = random.Random(17)
    cases = [*FIXED_CASES, *(random_case(rng) for _ in range(40))]
    runs, expected, names = [], {}, []
    for c, case in enumerate(cases):
        permutations = [list(case), list(reversed(case))]
        permutations += [rng.sample(case, k=len(case)) for _ in range(8)]
        for o, events in enumerate(permutations):
            prefix = f"c{c}o{o}-"
            runs.append(split(rng, renamed(events, prefix)))
            expected[prefix] = expected_links(case)
            names.append((prefix, events))
    results = apply_runs(env, runs)
    for (prefix, events), run in zip(names, results, strict=True):
        assert [r.rejected for r in run] == [[] for _ in run], (prefix, events)
        assert stored_links(env, prefix) == expected[prefix], (prefix, events)
    assert double_claims(env) == []
    print(
        f"\nshuffled links: {len(cases)} cases, {len(runs)} orders,"
        f" {sum(len(e) for _, e in names)} events, one answer each"
    )


def test_a_replay_changes_nothing_and_an_end_only_moves_earlier(env: ModuleEnv) -> None:
    first = link("V", "M", at(0), at(10))
    later_end = link("V", "M", at(0), at(12))
    open_again = link("V", "M", at(0))
    earlier_end = link("V", "M", at(0), at(8))
    batches = [[first], [first, later_end, open_again], [earlier_end], [first]]
    [results] = apply_runs(env, [[renamed(b, "R-") for b in batches]])
    assert [(r.inserted, r.duplicates, r.rejected) for r in results] == [
        (1, 0, []),
        (0, 3, []),
        (1, 0, []),
        (0, 1, []),
    ]
    assert stored_links(env, "R-") == {("V", "M", at(0), at(8))}
    claims = "SELECT valid_to FROM vehicle_meter_link_claims WHERE vehicle_id = 'R-V'"
    assert env.query(claims) == [(at(8),)]


def test_a_writer_waits_for_another_holding_links_it_depends_on(env: ModuleEnv) -> None:
    """Two link transactions on different vehicles and meters still touch one effective link.

    The first (a link of vehicle V1) is held open; the second links V2 to
    meter M2, which ends V1's link to M2 too. It must wait for the first to
    commit, then see it: the result is the rule's whatever the interleaving.
    """
    before = [link("V1", "M2", at(1))]
    first = [link("V1", "M1", at(4))]  # ends V1 -> M2 at 4 (vehicle side)
    second = [link("V2", "M2", at(3))]  # ends V1 -> M2 at 3 (meter side)
    apply_runs(env, [[renamed(before, "W-")]])

    async def run() -> WriteResult:
        async with WriterConnection(env.writer_url) as db1, WriterConnection(env.writer_url) as db2:
            conn1, conn2 = await db1.get(), await db2.get()
            async with conn1.transaction():  # held open until the second writer waits
                await LinkSink(db1).store(conn1, [(e, "first") for e in renamed(first, "W-")])
                waiting = asyncio.create_task(
                    LinkSink(db2).store(conn2, [(e, "second") for e in renamed(second, "W-")])
                )
                await asyncio.to_thread(
                    wait_for,
                    lambda: env.backends("energy-consumer", waiting_on_lock=True),
                    explain=lambda: f"the second writer did not wait (done: {waiting.done()})",
                )
                assert not waiting.done()
            return await waiting

    assert asyncio.run(run()).rejected == []
    assert stored_links(env, "W-") == expected_links([*before, *first, *second])
    assert double_claims(env) == []


# --- Through Kafka and two worker processes ------------------------------------------------

#: ``validTo`` in year 9999 at -14:00 is year 10000 in UTC: beyond every bound.
FAR_END = "9999-12-31T23:59:59-14:00"


@pytest.fixture(scope="module")
def link_workers(env: ModuleEnv) -> list[Any]:
    """Two links workers sharing the topic's partitions, as a scaled deployment runs them."""
    return [env.start_consumer("links"), env.start_consumer("links")]


def test_shuffled_links_through_kafka_and_two_workers(
    env: ModuleEnv, link_workers: list[Any]
) -> None:
    rng = random.Random(1717)
    events = [e for _ in range(6) for e in random_case(rng)]
    events += [*FIXED_CASES[0][::-1], *FIXED_CASES[1][::-1]]
    rng.shuffle(events)
    records = [
        (e.vehicle_id.encode(), e.model_dump_json(by_alias=True).encode())
        for e in renamed(events, "K-")
    ]
    far = orjson.dumps(
        {"vehicleId": "K-V9", "meterId": "K-M9", "validFrom": iso(at(0)), "validTo": FAR_END}
    )
    records.insert(len(records) // 2, (b"K-V9", far))
    records.append((b"K-V9", far))  # and its replay
    produce(env.services.kafka_bootstrap, env.topics.links, records)

    dlq = dlq_topic(env.topics.links)
    # Only the far end is refused, and refused alike both times, as invalid.
    dead = read_all(env.services.kafka_bootstrap, dlq, expected=2)
    assert [(r.value, dict(r.headers)[DLQ_HEADER_ERROR_CLASS]) for r in dead] == [
        (far, b"validation"),
        (far, b"validation"),
    ]
    assert all(b"validTo" in dict(r.headers)[DLQ_HEADER_REASON] for r in dead)
    # Every claim stored with its final end: the last transaction that wrote
    # one also recomputed the effective links it touches.
    expected_claims = {(v, m, s, e) for (v, m, s), e in claims_of(events).items()}
    wait_for(
        lambda: stored_claims(env, "K-") == expected_claims,
        explain=lambda: f"{len(stored_claims(env, 'K-'))} of {len(expected_claims)} claims",
    )
    assert len(read_all(env.services.kafka_bootstrap, dlq, expected=2)) == 2
    assert stored_links(env, "K-") == expected_links(events)
    assert double_claims(env) == []


# --- What the analytics API counts, and what it says about links ---------------------------

H0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)


def minute(n: int) -> datetime:
    return H0 + timedelta(minutes=n)


@pytest.fixture(scope="module")
def shared_meter(env: ModuleEnv) -> None:
    """Meter DM moves from DV1 to DV2 while still linked to DV1; CV1 and CV2 both claim CM at once.

    Four hours of readings from ``H0``: DM 0.25 kWh a minute, CM 0.5, each
    vehicle 0.125 (multiples of 1/8: every sum is exact).
    """
    meters = [
        (m, minute(n), kwh, 230.0) for n in range(240) for m, kwh in (("DM", 0.25), ("CM", 0.5))
    ]
    vehicles = [
        (v, minute(n), 50.0, 0.125, 30.0) for n in range(240) for v in ("DV1", "DV2", "CV1", "CV2")
    ]
    write_batches(env, Stream.METER, [meters])
    write_batches(env, Stream.VEHICLE, [vehicles])
    links = [
        link("DV2", "DM", minute(150)),  # arrives first: DM moves to DV2 from minute 150
        link("DV1", "DM", minute(-60)),
        link("CV1", "CM", minute(-60)),
        link("CV2", "CM", minute(-60)),
    ]
    results = write_batches(env, Stream.LINKS, [[e] for e in links])
    assert [r.rejected for r in results] == [[], [], [], []]


def test_a_meter_linked_to_a_second_vehicle_counts_its_ac_once(
    env: ModuleEnv, analytics: TestClient, shared_meter: None
) -> None:
    window = {"from": iso(H0), "to": iso(minute(240))}
    summaries = {
        v: analytics.get(f"/v1/analytics/performance/{v}", params=window).json()
        for v in ("DV1", "DV2", "CV1", "CV2")
    }
    assert {v: s["totalAc"] for v, s in summaries.items()} == {
        "DV1": 150 * 0.25,
        "DV2": 90 * 0.25,
        "CV1": 0.0,
        "CV2": 0.0,
    }
    fleet = analytics.get("/v1/analytics/fleet", params={**window, "limit": 1000}).json()
    assert fleet["total"] == len(fleet["items"])
    # This module's other tests link vehicles of their own, with no readings here.
    by_vehicle = {
        i["vehicleId"]: i["totalAc"] for i in fleet["items"] if i["vehicleId"] in summaries
    }
    assert by_vehicle == {"CV1": 0.0, "CV2": 0.0, "DV1": 37.5, "DV2": 22.5}
    # The fleet's AC is DM's, once; CM's is claimed by two vehicles at once and by neither.
    assert sum(by_vehicle.values()) == 240 * 0.25


def test_link_status_says_why_a_link_ended_or_never_took_effect(
    analytics: TestClient, shared_meter: None
) -> None:
    dv1 = analytics.get("/v1/links/DV1")
    assert dv1.status_code == 200, dv1.text
    assert dv1.json() == {
        "vehicleId": "DV1",
        "links": [
            {
                "vehicleId": "DV1",
                "meterId": "DM",
                "validFrom": iso(minute(-60)),
                "validTo": None,
                "state": "ended",
                "effectiveFrom": iso(minute(-60)),
                "effectiveTo": iso(minute(150)),
                "endedBy": [{"vehicleId": "DV2", "meterId": "DM", "validFrom": iso(minute(150))}],
                "contestedBy": [],
            }
        ],
    }
    cv1 = analytics.get("/v1/links/CV1").json()["links"]
    assert [(c["state"], c["effectiveFrom"], c["effectiveTo"], c["contestedBy"]) for c in cv1] == [
        (
            "contested",
            None,
            None,
            [{"vehicleId": "CV2", "meterId": "CM", "validFrom": iso(minute(-60))}],
        )
    ]
    dm = analytics.get("/v1/meters/DM/links").json()
    assert dm["meterId"] == "DM"
    assert [(c["vehicleId"], c["state"], c["effectiveTo"]) for c in dm["links"]] == [
        ("DV1", "ended", iso(minute(150))),
        ("DV2", "active", None),
    ]
    missing = analytics.get("/v1/links/never-linked")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert analytics.get("/v1/links/DV1", headers={"Authorization": ""}).status_code == 401


# --- Link times are bounded like reading times ---------------------------------------------


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("validTo", {"validTo": FAR_END}),
        ("validFrom", {"validFrom": iso(datetime.now(UTC) - timedelta(days=91))}),
        ("validFrom", {"validFrom": iso(datetime.now(UTC) + timedelta(days=400))}),
    ],
)
def test_link_times_out_of_bounds_are_422_naming_the_field(
    gateway: TestClient, field: str, change: dict[str, str]
) -> None:
    valid = {"vehicleId": "BV", "meterId": "BM", "validFrom": iso(datetime.now(UTC))}
    response = gateway.post("/v1/links", json={**valid, **change})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]


# --- The migration that introduces claims ----------------------------------------------------


@pytest.fixture
def migrated_before_claims(env: ModuleEnv) -> Iterator[str]:
    """A new database migrated up to the links table of old (every migration before 0009)."""
    name = f"t_links_mig_{uuid.uuid4().hex[:8]}"
    create_database(env.services, name)
    older = Path(tempfile.mkdtemp())
    try:
        for path in sorted(SQL_DIR.glob("*.sql")):
            if path.name < "0009":
                shutil.copy(path, older / path.name)
        url = with_database(env.services.writer_url, name)
        apply_migrations(url, older)
        yield url
    finally:
        shutil.rmtree(older)
        drop_database(env.services, name)


def test_the_migration_keeps_old_links_as_claims_and_ends_double_counting(
    migrated_before_claims: str,
) -> None:
    url = migrated_before_claims
    old = [
        ("OV1", "OM1", at(0), at(2)),  # closed by the re-link below
        ("OV1", "OM2", at(2), None),
        ("OV2", "OM2", at(1), None),  # the same meter as OV1 -> OM2, overlapping: counted twice
    ]
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO vehicle_meter_links (vehicle_id, meter_id, valid_from, valid_to)"
            " VALUES (%s, %s, %s, %s)",
            old,
        )
        # A far end stored before link times were bounded (year 10000 in UTC).
        cur.execute(
            "INSERT INTO vehicle_meter_links (vehicle_id, meter_id, valid_from, valid_to)"
            " VALUES ('OV3', 'OM3', %s, %s::timestamptz)",
            (at(0), FAR_END),
        )
    apply_migrations(url)
    with psycopg.connect(url, autocommit=True) as conn:
        claims = conn.execute(
            "SELECT vehicle_id, meter_id, valid_from, valid_to"
            " FROM vehicle_meter_link_claims ORDER BY 1, 3"
        ).fetchall()
        effective = conn.execute(
            "SELECT vehicle_id, meter_id, valid_from, valid_to"
            " FROM vehicle_meter_links ORDER BY 1, 3"
        ).fetchall()
    assert claims == [*old, ("OV3", "OM3", at(0), None)]
    as_events = [link(v, m, s, e) for v, m, s, e in claims]
    assert set(effective) == expected_links(as_events)
    assert ("OV2", "OM2", at(1), at(2)) in effective
