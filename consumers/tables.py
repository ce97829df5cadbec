"""The shape of each reading stream's tables, and the SQL written against them.

Identifiers are composed with ``psycopg.sql``; values always travel as
parameters or through COPY, never inside SQL text.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql

from schemas import Stream, ValidationLimits
from schemas.rows import RowDecoder

#: One history row: device id, device timestamp, then the stream's values.
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ReadingTable:
    """History and live-status tables of one reading stream."""

    stream: Stream
    history: str
    live: str
    key: str
    values: tuple[str, ...]
    pg_types: tuple[str, ...]
    #: The reading's model fields, in row order: device id, timestamp, then ``values``.
    fields: tuple[str, ...]
    rollup: str
    #: Rollup sum columns and the index, in a history row, of the value each sums.
    rollup_sums: tuple[tuple[str, int], ...]
    #: Indexes, in a row, of the interval energy and of the register (see
    #: :mod:`consumers.registers`); a history row ends with the register note.
    energy_index: int
    register_index: int

    @property
    def columns(self) -> tuple[str, ...]:
        """Live-status columns, and a decoded row's: key, recorded_at, values."""
        return (self.key, "recorded_at", *self.values)

    @property
    def history_columns(self) -> tuple[str, ...]:
        """History columns in COPY order: a decoded row's, then the register note."""
        return (*self.columns, "register_note")

    def decoder(self, limits: ValidationLimits) -> RowDecoder:
        """Record value -> history row (its register note ``None``), under ``limits``
        (build one per batch)."""
        return RowDecoder(self.stream, self.fields, limits, pad=1)

    def copy_history(self, table: str | None = None) -> sql.Composed:
        """``COPY <history> (...) FROM STDIN (FORMAT BINARY)``."""
        return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(table or self.history),
            sql.SQL(", ").join(map(sql.Identifier, self.history_columns)),
        )

    def create_staging(self) -> sql.Composed:
        """A per-session staging table for the duplicate-tolerant path."""
        return sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        ).format(sql.Identifier(self.staging), sql.Identifier(self.history))

    @property
    def staging(self) -> str:
        """Name of the session-local staging table."""
        return f"staging_{self.history}"

    def merge_staging(self) -> sql.Composed:
        """Move staged rows into history, dropping those already there (first write wins)."""
        cols = sql.SQL(", ").join(map(sql.Identifier, self.history_columns))
        return sql.SQL(
            "INSERT INTO {history} ({cols}) SELECT {cols} FROM {staging} "
            "ON CONFLICT DO NOTHING RETURNING {cols}"
        ).format(
            history=sql.Identifier(self.history), cols=cols, staging=sql.Identifier(self.staging)
        )

    def upsert_rollup(self, notes: bool = True) -> sql.Composed:
        """Add per-hour counts and sums (from parallel arrays) to the hourly rollup.

        The arrays: device, hour, readings, each sum, the bitmap of the hour's
        minutes with a reading (or-ed in) as two halves of 30 bits (minutes 0
        to 29, then 30 to 59: int4 arrays cost the consumer far less than an
        int8 one), then (``notes``) resets and jumps. Deltas may be negative (a
        late reading changed the energy of the one after it).
        """
        sums = [name for name, _ in self.rollup_sums]
        counts = ["resets", "jumps"] if notes else []
        cols = [self.key, "hour", "readings", *sums, "minutes", *counts]
        arrays = ["text", "timestamptz", "int4", *(["float8"] * len(sums)), "int4", "int4"]
        arrays += ["int4"] * len(counts)
        names = [f"a{n}" for n in range(len(arrays))]
        low, high = len(sums) + 3, len(sums) + 4
        picked: list[sql.Composable] = [sql.Identifier(n) for n in names[:low]]
        picked.append(
            sql.SQL("({high}::int8 << 30) | {low}").format(
                high=sql.Identifier(names[high]), low=sql.Identifier(names[low])
            )
        )
        picked += [sql.Identifier(n) for n in names[high + 1 :]]
        return sql.SQL(
            "INSERT INTO {rollup} AS r ({cols})"
            " SELECT {picked} FROM unnest({arrays}) AS u({names})"
            " ON CONFLICT ({key}, hour) DO UPDATE SET {adds}"
        ).format(
            rollup=sql.Identifier(self.rollup),
            cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
            picked=sql.SQL(", ").join(picked),
            arrays=sql.SQL(", ").join(sql.SQL("%b::{}[]").format(sql.SQL(t)) for t in arrays),
            names=sql.SQL(", ").join(map(sql.Identifier, names)),
            key=sql.Identifier(self.key),
            adds=sql.SQL(", ").join(
                [
                    *(
                        sql.SQL("{c} = r.{c} + EXCLUDED.{c}").format(c=sql.Identifier(c))
                        for c in ("readings", *sums, *counts)
                    ),
                    sql.SQL("minutes = r.minutes | EXCLUDED.minutes"),
                ]
            ),
        )

    def upsert_live(self) -> sql.Composed:
        """Multi-row upsert of live status from parallel arrays, newest device time winning,
        returning the heads the registers may need (:mod:`consumers.registers`).

        An older or equal ``recorded_at`` never overwrites the stored one; a
        moved row keeps the time and register it replaced (``previous_*``) and
        the earliest time it has seen (``first_recorded_at``).
        The parameters: arrays of the live columns, and of each device's oldest
        time in the batch; whether the batch holds
        register readings (then every replaced head is returned); the batch's
        oldest time (else only heads at or after it are returned: a device with
        a reading at or before its head has one); the number of devices. When
        fewer moved, a last row of NULLs says so. No join: the common case
        (every device moved, interval readings) returns nothing. ``ON CONFLICT
        DO UPDATE`` locks every conflicting row, moved or not: a second writer
        of a device waits here.
        """
        cols = self.columns
        arrays = sql.SQL(", ").join(
            # %b: arrays travel in binary, much cheaper to dump than text.
            sql.SQL("%b::{}[]").format(sql.SQL(t))
            for t in ("text", "timestamptz", *self.pg_types, "timestamptz")
        )
        updates = sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
            for c in (*cols[1:], "updated_at")
        )
        return sql.SQL(
            "WITH moved AS ("
            " INSERT INTO {live} AS live ({cols}, first_recorded_at, updated_at)"
            " SELECT *, now() FROM unnest({arrays})"
            " ON CONFLICT ({key}) DO UPDATE SET {updates},"
            " first_recorded_at = least(live.first_recorded_at, EXCLUDED.first_recorded_at),"
            " previous_recorded_at = live.recorded_at, previous_register = live.{register}"
            " WHERE live.recorded_at < EXCLUDED.recorded_at"
            " RETURNING {key}, previous_recorded_at, previous_register"
            ") "
            "SELECT * FROM moved"
            " WHERE previous_recorded_at IS NOT NULL AND (%b::bool OR previous_recorded_at >= %b)"
            " UNION ALL SELECT NULL, NULL, NULL WHERE (SELECT count(*) FROM moved) < %b"
        ).format(
            live=sql.Identifier(self.live),
            cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
            arrays=arrays,
            key=sql.Identifier(self.key),
            updates=updates,
            register=sql.Identifier(cols[self.register_index]),
        )

    @property
    def copy_types(self) -> list[str]:
        """PostgreSQL type names of the COPY columns, for binary COPY."""
        return ["text", "timestamptz", *self.pg_types, "text"]


METER_TABLE = ReadingTable(
    stream=Stream.METER,
    history="meter_readings_history",
    live="meter_live_status",
    key="meter_id",
    values=("kwh_consumed_ac", "voltage", "kwh_register_ac"),
    pg_types=("float8", "float8", "float8"),
    fields=("meter_id", "timestamp", "kwh_consumed_ac", "voltage", "kwh_register_ac"),
    rollup="meter_hourly_rollup",
    rollup_sums=(("kwh_consumed_ac", 2),),
    energy_index=2,
    register_index=4,
)

VEHICLE_TABLE = ReadingTable(
    stream=Stream.VEHICLE,
    history="vehicle_readings_history",
    live="vehicle_live_status",
    key="vehicle_id",
    values=("soc", "kwh_delivered_dc", "battery_temp", "kwh_register_dc"),
    pg_types=("float8", "float8", "float8", "float8"),
    fields=(
        "vehicle_id",
        "timestamp",
        "soc",
        "kwh_delivered_dc",
        "battery_temp",
        "kwh_register_dc",
    ),
    rollup="vehicle_hourly_rollup",
    rollup_sums=(("kwh_delivered_dc", 3), ("battery_temp_sum", 4)),
    energy_index=3,
    register_index=5,
)

READING_TABLES = {Stream.METER: METER_TABLE, Stream.VEHICLE: VEHICLE_TABLE}


#: History's unique key of a row: (device id, device timestamp).
row_key: Callable[[Row], tuple[str, datetime]] = operator.itemgetter(0, 1)
