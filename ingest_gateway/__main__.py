"""``python -m ingest_gateway``: serve the gateway with uvicorn (``GATEWAY_*`` settings).

``GATEWAY_WORKERS`` processes share the port; ``/metrics`` adds up all of them
(see :func:`schemas.web.serve`).
"""

from __future__ import annotations

from ingest_gateway.settings import GatewaySettings
from schemas.web import serve


def main() -> int:
    """Run ``GATEWAY_WORKERS`` processes on ``GATEWAY_HOST:GATEWAY_PORT`` until stopped."""
    serve("ingest_gateway.app:create_app", GatewaySettings(), "gateway")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
