"""Validation limits shared by the gateway and the consumers.

The same rules must hold wherever an event enters: an event the gateway accepts
must never be dead-lettered by a consumer for a rule the gateway did not know.
Both services build one :class:`ValidationLimits` from their settings and pass
it to :func:`schemas.decode_event`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

#: Energy of one one-minute interval above this is implausible: a 350 kW DC
#: fast charger delivers about 5.8 kWh in a minute.
DEFAULT_MAX_KWH_PER_READING = 10.0
DEFAULT_MAX_FUTURE = timedelta(minutes=5)
#: History keeps this much; older readings have no partition to land in.
DEFAULT_RETENTION = timedelta(days=90)
#: Links may be planned ahead (a vehicle assigned to a charger from next
#: month), but not so far that a typo such as year 9999 passes.
DEFAULT_MAX_LINK_FUTURE = timedelta(days=366)

#: The earliest and the latest acceptable time, both inclusive.
Window = tuple[datetime, datetime]


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """Configurable bounds applied on top of the fixed field ranges.

    ``now`` is the clock the future-skew rule compares against; ``None`` means
    the wall clock at validation time (tests pin it for repeatability).
    """

    max_future: timedelta = DEFAULT_MAX_FUTURE
    max_kwh_per_reading: float = DEFAULT_MAX_KWH_PER_READING
    #: Readings older than this are refused (they are past the history's retention).
    retention: timedelta = DEFAULT_RETENTION
    #: A link's ``validFrom`` or ``validTo`` further ahead than this is refused.
    max_link_future: timedelta = DEFAULT_MAX_LINK_FUTURE
    now: datetime | None = None

    def window(self) -> Window:
        """The earliest and the latest acceptable reading time, both inclusive.

        A reading more than ``max_future`` ahead of ``now`` (or the wall clock)
        is refused, and so is one more than ``retention`` behind it.
        """
        now = self.now or datetime.now(UTC)
        return now - self.retention, now + self.max_future

    def link_window(self) -> Window:
        """The earliest and the latest acceptable link time (``validFrom``, ``validTo``).

        As :meth:`window`, but a link may lie up to ``max_link_future`` ahead.
        """
        now = self.now or datetime.now(UTC)
        return now - self.retention, now + self.max_link_future


DEFAULT_LIMITS = ValidationLimits()
