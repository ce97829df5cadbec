"""``python -m ingest_gateway``: serve the gateway with uvicorn (``GATEWAY_*`` settings).

With ``GATEWAY_WORKERS`` > 1, uvicorn runs that many processes sharing the
port, each with its own Kafka producer. Each would count its own Prometheus
metrics, and ``/metrics`` would show whichever worker answered; so the
workers write their metrics to files in a fresh directory
(``PROMETHEUS_MULTIPROC_DIR``, prometheus_client's multiprocess mode) and
``/metrics`` adds them up. A directory given by the environment is used as it
is (and must be emptied by whoever provides it before each start).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import uvicorn

from ingest_gateway.settings import GatewaySettings

#: The variable prometheus_client reads, in each worker, when it is imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def main() -> int:
    """Run uvicorn with ``GATEWAY_WORKERS`` processes on ``GATEWAY_HOST:GATEWAY_PORT``."""
    settings = GatewaySettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    own_dir = None
    if settings.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Set before the workers start (they inherit it); a fresh directory, as
        # files left by an earlier run would be added to this run's counts.
        own_dir = tempfile.mkdtemp(prefix="energy-gateway-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    try:
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
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
