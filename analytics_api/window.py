"""The time window of a query: ``[from, to)``, by default the last 24 hours."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from pydantic import AwareDatetime, TypeAdapter, ValidationError

from analytics_api.errors import InvalidQuery

_AWARE = TypeAdapter(AwareDatetime)

# A date and a time of day (seconds optional) with an offset or Z: pydantic alone
# would also read "6" or "1764345300" as Unix seconds.
_ISO_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:[Zz]|[+-]\d{2}:?\d{2})"
)
#: The times a window may name: whole days either side stay representable.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _parse(name: str, raw: str) -> datetime:
    if _ISO_TIME.fullmatch(raw) is None:
        message = "not an ISO 8601 date and time with an offset or Z"
    else:
        try:
            moment = _AWARE.validate_python(raw).astimezone(UTC)
        except (ValidationError, OverflowError) as exc:
            message = (
                exc.errors(include_url=False)[0]["msg"]
                if isinstance(exc, ValidationError)
                else "out of range"
            )
        else:
            if EARLIEST <= moment < LATEST:
                return moment
            message = f"must lie in the years {EARLIEST.year} to {LATEST.year - 1}"
    raise InvalidQuery(
        f"{name} must be an ISO 8601 time with an offset or Z (2026-11-28T15:55:00Z): {message}",
        [{"field": name, "message": message}],
    )


def resolve_window(
    start: str | None,
    end: str | None,
    default: timedelta,
    maximum: timedelta,
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """``(from, to)`` in UTC from the optional query parameters.

    Missing ``to`` is now; missing ``from`` is ``to - default``. Raises
    :class:`InvalidQuery` for naive or malformed times, ``from >= to``, or a
    window longer than ``maximum``.
    """
    to = _parse("to", end) if end is not None else (now or datetime.now(UTC))
    frm = _parse("from", start) if start is not None else to - default
    if frm >= to:
        raise InvalidQuery(
            "from must be earlier than to", [{"field": "from", "message": "not before to"}]
        )
    if to - frm > maximum:
        days = maximum.total_seconds() / 86400
        raise InvalidQuery(
            f"window longer than {days:g} days", [{"field": "from", "message": "window too long"}]
        )
    return frm, to


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def resolve_hour_window(
    start: str | None,
    end: str | None,
    default: timedelta,
    maximum: timedelta,
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """Like :func:`resolve_window`, widened to whole UTC hours (``from`` down, ``to`` up).

    Views built on hourly rollups (the fleet, the hourly series) answer for
    whole hours; the window they used is returned in the response.
    """
    frm, to = resolve_window(start, end, default, maximum, now)
    to_hour = _floor_hour(to)
    if to_hour < to:
        to_hour += timedelta(hours=1)
    frm_hour = _floor_hour(frm) if start is not None else to_hour - default
    if to_hour - frm_hour > maximum + timedelta(hours=1):
        raise InvalidQuery(
            "window longer than allowed", [{"field": "from", "message": "window too long"}]
        )
    return frm_hour, to_hour
