"""HTTP routes of the analytics API, and what every route module shares."""

from __future__ import annotations

from fastapi import Request
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from analytics_api.state import AnalyticsState


class CamelModel(BaseModel):
    """A documented answer: camelCase on the wire, like the events."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


def analytics_state(request: Request) -> AnalyticsState:
    """The app's :class:`AnalyticsState` (set by ``create_app``)."""
    state: AnalyticsState = request.app.state.analytics
    return state
