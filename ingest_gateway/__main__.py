"""``python -m ingest_gateway``: serve the gateway with uvicorn (``GATEWAY_*`` settings)."""

from __future__ import annotations

import logging

import uvicorn

from ingest_gateway.settings import GatewaySettings


def main() -> int:
    """Run uvicorn with ``GATEWAY_WORKERS`` processes on ``GATEWAY_HOST:GATEWAY_PORT``."""
    settings = GatewaySettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        "ingest_gateway.app:create_app",
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
