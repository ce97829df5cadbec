"""``python -m analytics_api``: serve the analytics API with uvicorn (``ANALYTICS_*`` settings)."""

from __future__ import annotations

import logging

import uvicorn

from analytics_api.settings import AnalyticsSettings


def main() -> int:
    """Run uvicorn with ``ANALYTICS_WORKERS`` processes on ``ANALYTICS_HOST:ANALYTICS_PORT``."""
    settings = AnalyticsSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        "analytics_api.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level.lower(),
        access_log=False,
        proxy_headers=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
