"""What the analytics API's lifespan owns, shared by the routes through ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

from analytics_api.queries import Reader
from analytics_api.settings import AnalyticsSettings


@dataclass(frozen=True, slots=True)
class AnalyticsState:
    """Settings and the database reader of one app instance."""

    settings: AnalyticsSettings
    reader: Reader
