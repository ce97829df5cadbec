"""Days of a named time zone as UTC windows, exact across daylight-saving changes.

A local day runs from the start of its date to the start of the next date,
``[start, end)``, where the start of a date is the first instant at which the
zone's clocks show that date or a later one:

- local midnight, almost always;
- where clocks jump over midnight (America/Havana, Asia/Beirut at the start of
  summer time: 00:00 becomes 01:00; America/Toronto in 1919: 23:30 became
  00:30), the first instant that exists on that date, so that day is 23 hours
  long;
- where midnight comes twice (America/Havana at the end of summer time:
  01:00 becomes 00:00), the first time, so the repeated hour belongs to the
  new date, which has 25 hours;
- a date a zone skipped entirely (Pacific/Apia, 2011-12-30) is 0 hours long.

Days therefore follow one another without gap or overlap, and every instant
falls in the day of the date its local clock shows (unless clocks are set back
across midnight from a time after it: the minutes shown twice before midnight
then count to the new date). Zones come from the IANA database: the system's,
else the ``tzdata`` package.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import NamedTuple
from zoneinfo import ZoneInfo, available_timezones

from analytics_api.errors import InvalidQuery

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
#: Dates a query may name: a day's start and end in UTC stay representable either side.
FIRST_YEAR, LAST_YEAR = 1970, 9998


class LocalDay(NamedTuple):
    """One local date of a zone and its UTC window ``[start, end)``."""

    date: date
    start: datetime
    end: datetime

    @property
    def hours(self) -> float:
        """The day's length: 24, or 23 and 25 (or 23.5, ...) across a clock change."""
        return (self.end - self.start) / timedelta(hours=1)


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def time_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (exact spelling, e.g. ``Europe/Berlin``, ``UTC``).

    Raises :class:`InvalidQuery` naming ``tz`` for any other name: only the
    database's own names are looked up, never a path of the server's.
    """
    if name not in _zone_names():
        raise InvalidQuery(
            f"tz must name an IANA time zone such as Europe/Berlin or UTC, not {name!r}",
            [{"field": "tz", "message": "unknown time zone"}],
        )
    return ZoneInfo(name)


def parse_date(field: str, raw: str) -> date:
    """A calendar date ``YYYY-MM-DD`` in the years 1970 to 9998; :class:`InvalidQuery` naming
    ``field`` otherwise."""
    message = "not a date of the form YYYY-MM-DD"
    if _DATE.fullmatch(raw) is not None:
        try:
            day = date.fromisoformat(raw)
        except ValueError as exc:
            message = str(exc)
        else:
            if FIRST_YEAR <= day.year <= LAST_YEAR:
                return day
            message = f"must lie in the years {FIRST_YEAR} to {LAST_YEAR}"
    raise InvalidQuery(
        f"{field} must be a local date such as 2026-03-29: {message}",
        [{"field": field, "message": message}],
    )


def day_start(zone: ZoneInfo, day: date) -> datetime:
    """The first instant (UTC) at which ``zone``'s clocks show ``day`` or a later date."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    # zoneinfo reads a wall time in a change with the offset before it (fold=0)
    # or after it (fold=1). Midnight existing once, both agree; twice (clocks
    # went back), the first is the earlier instant.
    before, after = midnight.astimezone(UTC), midnight.replace(fold=1).astimezone(UTC)
    if before <= after:
        return before
    # Clocks jumped over midnight: the change lies in (after, before]. Changes
    # fall on whole seconds, so halving down to one second finds it.
    low, high = int(after.timestamp()), int(before.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).date() < day:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)


def local_days(zone: ZoneInfo, first: date, end: date) -> list[LocalDay]:
    """The local days of ``zone`` from ``first`` up to ``end`` (exclusive), oldest first."""
    dates = [first + timedelta(days=i) for i in range((end - first).days + 1)]
    starts = [day_start(zone, d) for d in dates]
    return [LocalDay(d, s, e) for d, s, e in zip(dates, starts, starts[1:], strict=False)]


def resolve_dates(
    start: str | None,
    end: str | None,
    zone: ZoneInfo,
    default_days: int,
    max_days: int,
    now: datetime | None = None,
) -> tuple[date, date]:
    """``(from, to)`` local dates, ``to`` exclusive, from the optional query parameters.

    Missing ``to`` is tomorrow in ``zone`` (so today is the last day); missing
    ``from`` is ``default_days`` before ``to``. Raises :class:`InvalidQuery`
    for malformed dates, ``from >= to``, or more than ``max_days`` days.
    """
    today = (now or datetime.now(UTC)).astimezone(zone).date()
    last = parse_date("to", end) if end is not None else today + timedelta(days=1)
    first = parse_date("from", start) if start is not None else last - timedelta(days=default_days)
    if first >= last:
        raise InvalidQuery(
            "from must be an earlier date than to (to is exclusive)",
            [{"field": "from", "message": "not before to"}],
        )
    if (last - first).days > max_days:
        raise InvalidQuery(
            f"more than {max_days} days", [{"field": "from", "message": "too many days"}]
        )
    return first, last
