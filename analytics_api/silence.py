"""Silent devices: how long is silent (ISO 8601 durations), and the gauges that count them.

A device is silent for ``d`` when the newest reading in its live status was
taken (device time, ``recorded_at``) at least ``d`` before the database's
``now()``. Device time, not the time it was stored (``updated_at``): it says
how current the device's data is, which is what every view computed from it
depends on; it survives a replay of the topics into a fresh database (which
stores every reading again, now); and a device sending its buffer after an
outage stays silent until its readings reach the present. A device whose clock
runs late looks silent by as much; the list shows ``updatedAt`` beside it to
tell the two apart.

The gauges (:class:`SilentGauges`) are refreshed by one query per interval,
not per scrape, and say when they were last refreshed; while the database is
down they keep the counts of the last refresh and its time (see README,
"Silent devices").
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from prometheus_client import Counter, Gauge

from analytics_api.errors import DatabaseUnavailable, InvalidQuery
from analytics_api.queries import Reader

log = logging.getLogger(__name__)

#: Readings come once a minute: a shorter silence is every device between two heartbeats.
SHORTEST = timedelta(minutes=1)
#: Longer is no fleet question (live status keeps a device until it is deleted).
LONGEST = timedelta(days=366)

# Days and time of day only, as months and years have no fixed length; ASCII
# digits (``\d`` would take any script's), at most nine a number, so that no
# value overflows on its way to the bounds; something after "P", a number after "T".
_DURATION = re.compile(
    r"^P(?!$)(?:(?P<d>[0-9]{1,9})D)?"
    r"(?:T(?=[0-9])(?:(?P<h>[0-9]{1,9})H)?(?:(?P<m>[0-9]{1,9})M)?(?:(?P<s>[0-9]{1,9})S)?)?$"
)
#: The same for OpenAPI (ECMA-262 has no named groups in older dialects).
DURATION_PATTERN = re.sub(r"\?P<\w>", "", _DURATION.pattern)
#: The OpenAPI format of a silence: a duration of :data:`DURATION_PATTERN` within the bounds.
DURATION_FORMAT = "silence-duration"

SILENT_DEVICES = Gauge(
    "energy_silent_devices",
    "Devices of a stream whose newest reading (device time) is at least `threshold` old, "
    "as of energy_silent_devices_refreshed_timestamp_seconds.",
    ["stream", "threshold"],
    multiprocess_mode="mostrecent",
)
LIVE_DEVICES = Gauge(
    "energy_live_devices",
    "Devices of a stream in live status (ever seen), as of the last silent-device refresh.",
    ["stream"],
    multiprocess_mode="mostrecent",
)
REFRESHED = Gauge(
    "energy_silent_devices_refreshed_timestamp_seconds",
    "Database time of the last successful refresh of energy_silent_devices; 0 before the first.",
    multiprocess_mode="max",
)
REFRESH_FAILURES = Counter(
    "energy_silent_devices_refresh_failures_total",
    "Refreshes of energy_silent_devices that failed (database down, timeout, missing grant).",
)


@dataclass(frozen=True, slots=True)
class Duration:
    """A parsed duration and its canonical ISO 8601 text (``PT90M`` is ``PT1H30M``)."""

    text: str
    length: timedelta


def iso_duration(length: timedelta) -> str:
    """``length`` (whole seconds) in ISO 8601, days and time of day: ``P1DT2H``, ``PT10M``."""
    seconds = int(length.total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    return "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")


def parse_duration(name: str, raw: str) -> Duration:
    """``raw`` as an ISO 8601 duration between :data:`SHORTEST` and :data:`LONGEST`.

    Accepted: ``PnDTnHnMnS``, each part optional but one, whole numbers, upper
    case (``PT10M``, ``PT1H30M``, ``P2D``). Raises :class:`InvalidQuery`
    naming ``name`` for anything else: other forms (``10M``, ``P1M``, ``P2W``,
    fractions, signs), zero, or a length out of bounds.
    """
    found = _DURATION.fullmatch(raw)
    if found is None:
        message = "not an ISO 8601 duration of days, hours, minutes and seconds (PT10M, P1DT2H)"
    else:
        parts = {unit: int(value or 0) for unit, value in found.groupdict().items()}
        length = timedelta(
            days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"]
        )
        if SHORTEST <= length <= LONGEST:
            return Duration(iso_duration(length), length)
        message = f"must be between {iso_duration(SHORTEST)} and {iso_duration(LONGEST)}"
    raise InvalidQuery(f"{name} {raw!r}: {message}", [{"field": name, "message": message}])


class SilentGauges:
    """Keeps ``energy_silent_devices{stream,threshold}`` and ``energy_live_devices{stream}``.

    :meth:`run` refreshes them every ``every_s`` seconds with one query (every
    stream and threshold at once), whatever the scrape rate. A refresh that
    fails is logged and counted (``energy_silent_devices_refresh_failures_total``)
    and changes no gauge: the counts stay those of
    ``energy_silent_devices_refreshed_timestamp_seconds``, which stops advancing.
    """

    def __init__(self, reader: Reader, thresholds: Sequence[Duration], every_s: float) -> None:
        self._reader = reader
        self._thresholds = thresholds
        self._every_s = every_s

    async def refresh(self) -> bool:
        """One refresh; whether it succeeded. Never raises for the database's sake."""
        try:
            counts = await self._reader.silent_counts([t.length for t in self._thresholds])
        except (DatabaseUnavailable, psycopg.Error) as exc:
            REFRESH_FAILURES.inc()
            log.warning("silent devices: refresh failed, gauges keep their last values: %s", exc)
            return False
        for stream in counts:
            LIVE_DEVICES.labels(stream.stream).set(stream.devices)
            for threshold, silent in zip(self._thresholds, stream.silent, strict=True):
                SILENT_DEVICES.labels(stream.stream, threshold.text).set(silent)
        if counts:
            REFRESHED.set(counts[0].as_of.timestamp())
        return True

    async def run(self) -> None:
        """Refresh now, then every ``every_s`` seconds, until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(self._every_s)
