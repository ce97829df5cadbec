"""``python -m analytics_api``: serve the analytics API with uvicorn (``ANALYTICS_*`` settings).

``ANALYTICS_WORKERS`` processes share the port; ``/metrics`` adds up all of them
(see :func:`schemas.web.serve`).
"""

from __future__ import annotations

from analytics_api.settings import AnalyticsSettings
from schemas.web import serve


def main() -> int:
    """Run ``ANALYTICS_WORKERS`` processes on ``ANALYTICS_HOST:ANALYTICS_PORT`` until stopped."""
    serve("analytics_api.app:create_app", AnalyticsSettings(), "analytics")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
