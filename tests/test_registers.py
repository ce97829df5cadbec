"""Cumulative registers: the rules, and exactness in any arrival order.

The randomized test writes register series with resets, gaps, implausible
jumps, interval readings in between and declared replacements, delivered
shuffled, duplicated and replayed across batches and worker restarts, and
holds history, the rollups and the totals every view reads to a brute-force
recomputation from the series as the devices sent them.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers.batch import Batch
from consumers.connection import WriterConnection
from consumers.registers import Note, RegisterRules, ResetRule, counted
from consumers.worker import sink_for
from schemas import DeviceReplacement, Stream
from tests.conftest import ModuleEnv

#: The series start a day ago, on a whole hour, so every reading is recent.
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=20)


def _at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def test_rules_of_one_interval() -> None:
    rules = RegisterRules(max_kw=60.0)  # 1 kWh per minute at most
    one = _at(1)
    assert counted(None, None, one, 5.0, False, rules) == (0.0, None)
    assert counted(_at(0), None, one, 5.0, False, rules) == (0.0, None)  # after an interval reading
    assert counted(_at(0), 4.25, one, 5.0, False, rules) == (0.75, None)
    assert counted(_at(0), 4.0, one, 5.0, False, rules) == (1.0, None)  # exactly plausible
    assert counted(_at(0), 3.5, one, 5.0, False, rules) == (0.0, Note.JUMP)
    assert counted(_at(-180), 3.5, one, 5.0, False, rules) == (1.5, None)  # a gap keeps its energy
    assert counted(_at(0), 900.0, one, 0.5, False, rules) == (0.5, Note.RESET)
    assert counted(_at(0), 900.0, one, 2.0, False, rules) == (0.0, Note.RESET)  # implausible
    assert counted(_at(0), 4.0, one, 4.5, True, rules) == (0.0, Note.REPLACED)
    discard = RegisterRules(max_kw=60.0, reset=ResetRule.DISCARD)
    assert counted(_at(0), 900.0, one, 0.5, False, discard) == (0.0, Note.RESET)


# --- the randomized exactness test ---------------------------------------------------------

CASES = 200
#: The rules of the sinks in the randomized test: 6 kWh per minute at most.
RULES = RegisterRules(max_kw=360.0)


@dataclass
class Series:
    """One device's readings as sent, and the replacements declared for it."""

    stream: Stream
    device: str
    #: (minute, register or None, interval energy or None)
    readings: list[tuple[float, float | None, float | None]]
    replacements: list[float] = field(default_factory=list)

    def row(self, minute: float, register: float | None, interval: float | None) -> tuple[Any, ...]:
        """The decoded row the consumers would make of this reading."""
        at = _at(minute)
        if self.stream is Stream.METER:
            return (self.device, at, interval, 230.0, register, None)
        return (self.device, at, 50.0, interval, 25.0, register, None)


def random_series(rng: random.Random, n: int) -> Series:
    """Register series with resets, gaps, implausible jumps, interval readings, replacements."""
    stream = rng.choice([Stream.METER, Stream.VEHICLE])
    series = Series(stream, f"R{n}-{stream.value}", [])
    minute = float(rng.randrange(0, 120))
    register = rng.choice([0.0, rng.uniform(0, 5e4)])
    for _ in range(rng.randrange(4, 30)):
        step = rng.choices([1, 2, 3, rng.randrange(60, 240)], weights=[70, 10, 5, 5])[0]
        minute += step
        kind = rng.choices(["rise", "reset", "jump", "flat", "interval"], [70, 8, 8, 8, 6])[0]
        if kind == "rise":
            register += round(rng.uniform(0, 5.5) * step, 6)
        elif kind == "reset":
            register = rng.choice([0.0, round(rng.uniform(0, 3), 6), round(rng.uniform(5, 500), 6)])
        elif kind == "jump":
            register += rng.choice([1e4, 6.0 * step + 0.001])
        if kind == "interval":
            series.readings.append((minute, None, round(rng.uniform(0, 0.5), 6)))
        else:
            series.readings.append((minute, register, None))
    if rng.random() < 0.2:
        lo, hi = series.readings[0][0], series.readings[-1][0]
        series.replacements.append(rng.choice([rng.uniform(lo, hi), series.readings[1][0]]))
    return series


def expected(series: Series, rules: RegisterRules) -> dict[datetime, tuple[float, str | None]]:
    """Brute force, from the readings as sent: each reading's counted energy and note."""
    out: dict[datetime, tuple[float, str | None]] = {}
    previous: tuple[float, float | None] | None = None
    for minute, register, interval in sorted(series.readings):
        at = _at(minute)
        if register is None:
            out[at] = (interval or 0.0, None)
        elif previous is None or previous[1] is None:
            out[at] = (0.0, None)
        elif any(_at(previous[0]) < _at(m) <= at for m in series.replacements):
            out[at] = (0.0, "replaced")
        else:
            hours = (at - _at(previous[0])) / timedelta(hours=1)
            limit = rules.max_kw * hours
            rise = round(register - previous[1], 9)
            if rise >= 0:
                out[at] = (rise, None) if rise <= limit else (0.0, "jump")
            elif rules.reset is ResetRule.RESTART and register <= limit:
                out[at] = (register, "reset")
            else:
                out[at] = (0.0, "reset")
        previous = (minute, register)
    return out


@dataclass
class Delivery:
    """Everything one run writes: reading batches per stream, and replacement events."""

    steps: list[tuple[str, Any]] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)


def deliver(rng: random.Random, all_series: list[Series]) -> Delivery:
    """Shuffled, duplicated batches; replays of earlier batches; restarts; replacements."""
    out = Delivery()
    events: list[tuple[str, Any]] = []
    for series in all_series:
        for reading in series.readings:
            events.append((series.stream.value, series.row(*reading)))
        for minute in series.replacements:
            if series.stream is Stream.METER:
                swap = DeviceReplacement(meter_id=series.device, replaced_at=_at(minute))
            else:
                swap = DeviceReplacement(vehicle_id=series.device, replaced_at=_at(minute))
            events.append(("replacement", swap))
    rng.shuffle(events)
    dups = rng.sample(events, len(events) // 10)
    events += dups
    rng.shuffle(events)
    out.stats["readings"] = sum(len(s.readings) for s in all_series)
    out.stats["duplicates"] = len(dups)
    out.stats["shuffled"] = 1
    written: list[tuple[str, Any]] = []
    position = 0
    while position < len(events):
        size = rng.randrange(1, 150)
        chunk = events[position : position + size]
        position += size
        for kind in ("meter", "vehicle", "replacement"):
            items = [item for k, item in chunk if k == kind]
            if items:
                out.steps.append((kind, items))
                written.append((kind, items))
        if rng.random() < 0.2 and written:
            out.steps.append(("restart", None))
            out.stats["restarts"] += 1
        if rng.random() < 0.3 and written:
            out.steps.append(rng.choice(written))
            out.stats["replays"] += 1
    return out


async def _run(env: ModuleEnv, delivery: Delivery, rules: RegisterRules) -> Counter[Any]:
    """Write the delivery; the notes the writes reported (for the metrics), and late readings."""
    reported: Counter[Any] = Counter()
    db = WriterConnection(env.writer_url)
    try:
        for kind, items in delivery.steps:
            if kind == "restart":
                await db.discard()
                db = WriterConnection(env.writer_url)
                continue
            entries = [(item, f"{kind}:{i}") for i, item in enumerate(items)]
            if kind == "replacement":
                result = await sink_for(Stream.LINKS, db, rules).write(
                    Batch(offsets={}, links=entries)
                )
            else:
                result = await sink_for(Stream(kind), db, rules).write(
                    Batch(offsets={}, readings=entries)
                )
            assert result.rejected == []
            reported.update(result.notes)
            reported["late"] += result.late
    finally:
        await db.discard()
    return reported


def _check(env: ModuleEnv, all_series: list[Series], rules: RegisterRules) -> Counter[str]:
    """History, rollups and the totals functions against the brute force; the notes seen."""
    notes: Counter[str] = Counter()
    for stream, key, energy, rollup in (
        (Stream.METER, "meter_id", "kwh_consumed_ac", "meter_hourly_rollup"),
        (Stream.VEHICLE, "vehicle_id", "kwh_delivered_dc", "vehicle_hourly_rollup"),
    ):
        devices = [s for s in all_series if s.stream is stream]
        if not devices:
            continue
        ids = [s.device for s in devices]
        stored: dict[str, dict[datetime, tuple[float, str | None]]] = defaultdict(dict)
        history = f"{stream.value}_readings_history"
        for device, at, kwh, note in env.query(
            f"SELECT {key}, recorded_at, {energy}, register_note FROM {history}"  # noqa: S608 -- constant names
            f" WHERE {key} = ANY(%s)",
            (ids,),
        ):
            stored[device][at] = (kwh, note)
        hours: dict[tuple[str, datetime], tuple[int, float, int, int]] = {}
        for device, hour, n, kwh, resets, jumps in env.query(
            f"SELECT {key}, hour, readings, {energy}, resets, jumps FROM {rollup}"  # noqa: S608 -- constant names
            f" WHERE {key} = ANY(%s)",
            (ids,),
        ):
            hours[(device, hour)] = (n, kwh, resets, jumps)
        for series in devices:
            truth = expected(series, rules)
            assert stored[series.device] == truth, series
            notes.update(note for _, note in truth.values() if note)
            per_hour: dict[datetime, list[float]] = defaultdict(lambda: [0, 0.0, 0, 0])
            for at, (kwh, note) in truth.items():
                slot = per_hour[at.replace(minute=0, second=0, microsecond=0)]
                slot[0] += 1
                slot[1] += kwh
                slot[2] += note == "reset"
                slot[3] += note == "jump"
            got = {h: v for (d, h), v in hours.items() if d == series.device}
            assert set(got) >= set(per_hour), series
            for hour, (n, kwh, resets, jumps) in got.items():
                want = per_hour.get(hour, [0, 0.0, 0, 0])
                assert (n, resets, jumps) == (want[0], want[2], want[3]), (series, hour)
                assert kwh == pytest.approx(want[1], rel=1e-9, abs=1e-9), (series, hour)
            # The totals every view reads, over a window cutting hours at both ends.
            lo = _at(series.readings[0][0] + 7.5)
            hi = _at(series.readings[-1][0] - 3.5)
            if lo < hi:
                want_kwh = sum(k for at, (k, _) in truth.items() if lo <= at < hi)
                want_resets = sum(n == "reset" for at, (_, n) in truth.items() if lo <= at < hi)
                if stream is Stream.METER:
                    (row,) = env.query(
                        "SELECT kwh, resets FROM energy_meter_totals(%s, %s, %s, %s, %s)",
                        (series.device, lo, hi, lo, hi),
                    )
                else:
                    (row,) = env.query(
                        "SELECT kwh, resets FROM energy_vehicle_totals(%s, %s, %s)",
                        (series.device, lo, hi),
                    )
                assert row[0] == pytest.approx(want_kwh, rel=1e-9, abs=1e-9), series
                assert row[1] == want_resets, series
    return notes


@pytest.mark.parametrize(
    ("seed", "rules"),
    [(11, RULES), (12, RegisterRules(max_kw=120.0, reset=ResetRule.DISCARD))],
    ids=["restart", "discard"],
)
def test_registers_are_exact_in_any_arrival_order(
    env: ModuleEnv, seed: int, rules: RegisterRules
) -> None:
    rng = random.Random(seed)
    cases = CASES if rules is RULES else CASES // 4
    all_series = [random_series(rng, seed * 1000 + n) for n in range(cases)]
    delivery = deliver(rng, all_series)
    reported = asyncio.run(_run(env, delivery, rules))
    notes = _check(env, all_series, rules)
    # Every note history ends with was reported when it was set (a later reading
    # may take it back: reported counts at least what remains).
    for stream, key in ((Stream.METER, "meter_id"), (Stream.VEHICLE, "vehicle_id")):
        history = f"{stream.value}_readings_history"
        for note in ("reset", "jump", "replaced"):
            (stored,) = env.query(
                f"SELECT count(*) FROM {history} WHERE register_note = %s"  # noqa: S608 -- constant names
                f" AND {key} LIKE %s",
                (note, f"R{seed}___-%"),
            )
            assert reported[(stream.value, note)] >= stored[0], (stream, note)
    assert reported["late"] > 0
    stats = delivery.stats
    print(
        f"\nregisters ({rules.reset.value}, {rules.max_kw:g} kW): {cases} cases,"
        f" {stats['readings']} readings, {notes['reset']} resets, {notes['jump']} jumps,"
        f" {notes['replaced']} replacements counted, {stats['duplicates']} duplicates,"
        f" {len([s for s in delivery.steps if s[0] != 'restart'])} batches,"
        f" {stats['replays']} replays, {stats['restarts']} restarts: exact"
    )
    # The series are not trivially tame: every rule was exercised.
    assert min(notes["reset"], notes["jump"], notes["replaced"]) > 0
    assert min(stats["replays"], stats["restarts"]) > 0
