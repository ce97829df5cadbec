"""Cumulative energy registers: the energy each register reading counts, in any arrival order.

A register reading (``kwhRegisterAc``, ``kwhRegisterDc``) counts the energy of
the interval ending at its timestamp: its increase over the same device's
previous reading by device time (:func:`counted` gives the rules). History
keeps that energy in the interval column (``kwh_consumed_ac``,
``kwh_delivered_dc``) and why it is less than the increase in
``register_note``; every total sums the interval column, so register and
interval readings are counted the same way, at the later reading of each
interval.

The energy of a reading depends on the reading before it, so a reading that
arrives late changes the energy of the one after it. A batch is written in
one transaction (:class:`consumers.readings.ReadingSink`):

1. live status is upserted first. It holds each device's newest reading by
   device time, the head of its history; the upsert locks every device of
   the batch (a second writer of the same device waits) and returns the head
   it replaced (:meth:`RegisterBook.upsert_live`);
2. readings newer than their device's head (nearly all) get their energy
   here, each from the one before it: the head, or the previous reading of
   the batch (:meth:`RegisterBook.count_new`);
3. readings at or before the head are late: they are stored with no energy,
   then each one inserted, and the reading after it, are counted again from
   history (:meth:`RegisterBook.recount`), and the difference goes to the
   hourly rollups.

A replay inserts nothing, so changes nothing. A declared device replacement
(:class:`schemas.events.DeviceReplacement`) recounts the first reading at or
after it, through the same :meth:`RegisterBook.recount`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection, sql

from consumers.tables import ReadingTable, Row

#: An increase is rounded to this many decimals of a kWh (a µWh): the difference
#: of two registers sent as decimals then reads as the decimal difference.
RISE_DECIMALS = 9

#: One microsecond: the finest step of a PostgreSQL timestamp.
_US = timedelta(microseconds=1)


class ResetRule(StrEnum):
    """What a register that went down counts."""

    #: The counter restarted at 0: the interval counts the new value, if plausible.
    RESTART = "restart"
    #: Nothing: the interval across a reset counts 0.
    DISCARD = "discard"


class Note(StrEnum):
    """Why a register reading counts less than its increase (``register_note``)."""

    RESET = "reset"
    JUMP = "jump"
    REPLACED = "replaced"


@dataclass(frozen=True, slots=True)
class RegisterRules:
    """The configurable register rules (``CONSUMER_REGISTER_*``)."""

    #: The most power a device can draw or store, kW: an increase above it
    #: times the time elapsed is implausible. Sized for 350 kW DC charging.
    max_kw: float = 350.0
    reset: ResetRule = ResetRule.RESTART


def counted(
    previous_at: datetime | None,
    previous: float | None,
    at: datetime,
    register: float,
    replaced: bool,
    rules: RegisterRules,
) -> tuple[float, Note | None]:
    """The energy the register reading ``register`` at ``at`` counts, and why it is less.

    ``previous_at``/``previous`` are the device's previous reading by device
    time and its register (``None``: no previous reading, or an interval
    reading); ``replaced``: a replacement of the device was declared in
    ``(previous_at, at]``.

    - no previous register: 0 (a device's first reading opens its register);
    - a replacement since: 0, noted ``replaced``;
    - an increase (rounded to :data:`RISE_DECIMALS` decimals of a kWh, well
      below any meter's resolution): itself, if at most ``max_kw`` times the
      hours elapsed;
      else 0, noted ``jump``;
    - a decrease is a reset, noted ``reset``: under ``restart`` the counter
      restarted at 0, so the new value, if plausible (else 0); under
      ``discard``, 0.
    """
    if previous is None or previous_at is None:
        return 0.0, None
    if replaced:
        return 0.0, Note.REPLACED
    plausible = rules.max_kw * ((at - previous_at).total_seconds() / 3600.0)
    # To the µWh: 506.8 - 500.0 is 6.8, not 6.800000000000011.
    rise = round(register - previous, RISE_DECIMALS)
    if rise >= 0:
        return (rise, None) if rise <= plausible else (0.0, Note.JUMP)
    if rules.reset is ResetRule.RESTART and register <= plausible:
        return register, Note.RESET
    return 0.0, Note.RESET


@dataclass(frozen=True, slots=True)
class Head:
    """A device's newest stored reading before the batch: its time and register."""

    at: datetime
    register: float | None


@dataclass(frozen=True, slots=True)
class LiveResult:
    """What the live-status upsert learnt about the batch's devices.

    ``heads``: the replaced head of each device the batch moved forward and
    that the registers may need (the batch has register readings, or readings
    at or before the head); a superset is harmless. ``behind``: devices whose
    every reading in the batch is at or before their head (live status
    unchanged).
    """

    heads: dict[str, Head]
    behind: set[str]
    #: Whether the batch holds register readings.
    registers: bool


#: A recounted reading: (device, its time, energy delta, resets delta, jumps delta, its
#: new note when that changed to one, else None).
Adjustment = tuple[str, datetime, float, int, int, str | None]


class RegisterBook:
    """The register bookkeeping of one reading stream (see the module docstring)."""

    def __init__(self, table: ReadingTable, rules: RegisterRules) -> None:
        self.table = table
        self.rules = rules
        self._energy = table.energy_index
        self._register = table.register_index
        self._register_of = operator.itemgetter(table.register_index)
        self._upsert = table.upsert_live()
        self._behind = _behind_sql(table)
        self._first_seen = _first_seen_sql(table)
        self._recount = _recount_sql(table)
        self._update = _update_sql(table)
        self._replacements = (
            "SELECT device_id, replaced_at FROM device_replacements "
            "WHERE stream = %s AND device_id = ANY(%s) ORDER BY device_id, replaced_at"
        )

    async def upsert_live(self, conn: AsyncConnection, rows: Sequence[Row]) -> LiveResult:
        """Upsert live status from the newest of ``rows`` (history rows) per device;
        see :class:`LiveResult`."""
        newest: dict[str, Row] = {}
        # Each device's oldest time in the batch: nearly always its first row's.
        oldest: dict[str, datetime] = {}
        for row in rows:
            current = newest.get(row[0])
            if current is None:
                newest[row[0]] = row
                oldest[row[0]] = row[1]
            elif row[1] > current[1]:
                newest[row[0]] = row
            elif row[1] < oldest[row[0]]:
                oldest[row[0]] = row[1]
        if not newest:
            return LiveResult({}, set(), False)
        # Sorted by device id, so concurrent writers lock rows in one order.
        devices = sorted(newest)
        # The live columns: a history row less its register note.
        params: list[Any] = [list(c) for c in zip(*map(newest.get, devices), strict=True)][:-1]
        params.append(list(map(oldest.get, devices)))
        # At C speed: the registers of the batch, and whether any is not None.
        registers = list(map(self._register_of, rows)).count(None) < len(rows)
        params += [registers, min(oldest.values()), len(devices)]
        cur = await conn.execute(self._upsert, params)
        heads: dict[str, Head] = {}
        some_behind = False
        for device, previous_at, previous in await cur.fetchall():
            if device is None:
                some_behind = True
            elif registers or oldest[device] <= previous_at:
                # (The query filters on the batch's oldest time, not each device's.)
                heads[device] = Head(previous_at, previous)
        behind: set[str] = set()
        if some_behind:
            cur = await conn.execute(self._behind, (devices,))
            behind = {device for (device,) in await cur.fetchall()}
            # Live status did not move for these: the upsert left their first
            # time as it was, though the batch may hold older readings.
            late = sorted(behind)
            await conn.execute(self._first_seen, (late, list(map(oldest.get, late))))
        return LiveResult(heads, behind, registers)

    async def count_new(
        self, conn: AsyncConnection, rows: list[Row], live: LiveResult
    ) -> tuple[list[Row], list[tuple[str, datetime]]]:
        """``rows`` (history rows) with the energy and note of each register reading,
        and the keys of the late readings.

        Register readings newer than their device's head are counted here;
        late ones (at or before the head) are stored counting 0, and their
        keys returned for :meth:`recount` once inserted.
        """
        register, energy = self._register, self._energy
        late: list[tuple[str, datetime]] = []
        heads, behind = live.heads, live.behind
        if not heads and not behind and not live.registers:
            # Interval readings in order (the common case): stored as sent.
            return rows, late
        chains: dict[str, list[Row]] = {}
        for row in rows:
            device, at = row[0], row[1]
            head = heads.get(device)
            if device in behind or (head is not None and at <= head.at):
                late.append((device, at))
            else:
                chains.setdefault(device, []).append(row)
        counts = await self._count_chains(conn, chains, heads)
        out: list[Row] = []
        for row in rows:
            if row[register] is None:
                out.append(row)
                continue
            kwh, note = counts.get((row[0], row[1]), (0.0, None))
            out.append((*row[:energy], kwh, *row[energy + 1 : -1], note))
        return out, late

    async def _count_chains(
        self, conn: AsyncConnection, chains: dict[str, list[Row]], heads: dict[str, Head]
    ) -> dict[tuple[str, datetime], tuple[float, Note | None]]:
        """Each register reading's energy: from the head, then from the previous in the batch.

        ``chains`` holds every reading newer than its device's head: an
        interval reading between two register readings breaks the register.
        """
        register = self._register
        chains = {d: c for d, c in chains.items() if any(r[register] is not None for r in c)}
        if not chains:
            return {}
        replacements = await self._replacements_of(conn, list(chains))
        counts: dict[tuple[str, datetime], tuple[float, Note | None]] = {}
        for device, chain in chains.items():
            head = heads.get(device)
            previous_at = head.at if head is not None else None
            previous = head.register if head is not None else None
            swaps = replacements.get(device, ())
            seen: set[datetime] = set()
            for row in sorted(chain, key=_at):
                at, value = row[1], row[register]
                if at in seen:
                    continue  # a repeat within the batch: the first is stored
                seen.add(at)
                if value is not None:
                    replaced = previous_at is not None and any(previous_at < s <= at for s in swaps)
                    counts[(device, at)] = counted(
                        previous_at, previous, at, value, replaced, self.rules
                    )
                previous_at, previous = at, value
        return counts

    async def _replacements_of(
        self, conn: AsyncConnection, devices: list[str]
    ) -> dict[str, list[datetime]]:
        cur = await conn.execute(self._replacements, (self.table.stream.value, devices))
        found: dict[str, list[datetime]] = {}
        for device, at in await cur.fetchall():
            found.setdefault(device, []).append(at)
        return found

    async def recount(
        self, conn: AsyncConnection, keys: Iterable[tuple[str, datetime]]
    ) -> list[Adjustment]:
        """Count again, from history, each register reading at ``keys`` and the one after each.

        Stores what changed and returns the rollup adjustments. A key need not
        be a stored reading: ``(device, t - 1 µs)`` recounts the device's
        first reading at or after ``t``.
        """
        keys = sorted(set(keys))
        if not keys:
            return []
        devices = [k[0] for k in keys]
        times = [k[1] for k in keys]
        cur = await conn.execute(self._recount, (devices, times, self.table.stream.value))
        changed: list[tuple[str, datetime, float, str | None]] = []
        adjustments: list[Adjustment] = []
        for found in await cur.fetchall():
            device, at, register, kwh, note, previous_at, previous, replaced = found
            new_kwh, new_note = counted(previous_at, previous, at, register, replaced, self.rules)
            new_note_text = None if new_note is None else new_note.value
            if new_kwh == kwh and new_note_text == note:
                continue
            changed.append((device, at, new_kwh, new_note_text))
            adjustments.append(
                (
                    device,
                    at,
                    new_kwh - kwh,
                    (new_note_text == Note.RESET) - (note == Note.RESET),
                    (new_note_text == Note.JUMP) - (note == Note.JUMP),
                    new_note_text if new_note_text != note else None,
                )
            )
        if changed:
            columns = [list(c) for c in zip(*changed, strict=True)]
            await conn.execute(self._update, columns)
        return adjustments

    @staticmethod
    def before(at: datetime) -> datetime:
        """The key whose :meth:`recount` reaches the first reading at or after ``at``."""
        return at - _US


def _at(row: Row) -> datetime:
    at: datetime = row[1]
    return at


def _behind_sql(table: ReadingTable) -> sql.Composed:
    """Of the devices (an array), those whose live status this transaction did not move."""
    return sql.SQL(
        "SELECT {key} FROM {live}"
        " WHERE {key} = ANY(%b::text[]) AND xmin <> pg_current_xact_id()::xid"
    ).format(live=sql.Identifier(table.live), key=sql.Identifier(table.key))


def _first_seen_sql(table: ReadingTable) -> sql.Composed:
    """Lower live status's first time of devices (an array) to times (an array) before it."""
    return sql.SQL(
        "UPDATE {live} SET first_recorded_at = u.at"
        " FROM unnest(%b::text[], %b::timestamptz[]) AS u(device, at)"
        " WHERE {key} = u.device AND (first_recorded_at IS NULL OR first_recorded_at > u.at)"
    ).format(live=sql.Identifier(table.live), key=sql.Identifier(table.key))


def _recount_sql(table: ReadingTable) -> sql.Composed:
    """Each register reading at the keys, and the reading after each key, with its
    stored energy and note, the reading before it and whether a replacement lies between."""
    return sql.SQL(
        "WITH keys AS (SELECT * FROM unnest(%s::text[], %s::timestamptz[]) AS k(device, at)),"
        " targets AS ("
        "  SELECT device, at FROM keys"
        "  UNION"
        "  SELECT k.device, n.recorded_at FROM keys k CROSS JOIN LATERAL ("
        "   SELECT recorded_at FROM {history} h"
        "   WHERE h.{key} = k.device AND h.recorded_at > k.at"
        "   ORDER BY recorded_at LIMIT 1) n"
        " ) "
        "SELECT t.device, t.at, h.{register}, h.{energy}, h.register_note,"
        " p.recorded_at, p.{register},"
        " EXISTS (SELECT 1 FROM device_replacements r"
        "  WHERE r.stream = %s AND r.device_id = t.device"
        "  AND r.replaced_at > p.recorded_at AND r.replaced_at <= t.at) "
        "FROM targets t"
        " JOIN {history} h ON h.{key} = t.device AND h.recorded_at = t.at"
        " LEFT JOIN LATERAL ("
        "  SELECT recorded_at, {register} FROM {history} b"
        "  WHERE b.{key} = t.device AND b.recorded_at < t.at"
        "  ORDER BY recorded_at DESC LIMIT 1) p ON true "
        "WHERE h.{register} IS NOT NULL "
        "ORDER BY t.device, t.at"
    ).format(**_names(table))


def _update_sql(table: ReadingTable) -> sql.Composed:
    """Set the energy and note of history rows, from parallel arrays (device, time, kwh, note)."""
    return sql.SQL(
        "UPDATE {history} h SET {energy} = u.kwh, register_note = u.note"
        " FROM unnest(%b::text[], %b::timestamptz[], %b::float8[], %b::text[])"
        " AS u(device, at, kwh, note)"
        " WHERE h.{key} = u.device AND h.recorded_at = u.at"
    ).format(**_names(table))


def _names(table: ReadingTable) -> dict[str, sql.Identifier]:
    """The identifiers the statements above name: history, its key, energy and register."""
    return {
        "history": sql.Identifier(table.history),
        "key": sql.Identifier(table.key),
        "energy": sql.Identifier(table.columns[table.energy_index]),
        "register": sql.Identifier(table.columns[table.register_index]),
    }
