"""Liveness, readiness and metrics: unauthenticated, for orchestrators and Prometheus."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ingest_gateway.state import GatewayState

router = APIRouter()


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    """Always 200 while the process serves HTTP."""
    return {"status": "ok"}


@router.get("/readyz", summary="Kafka answers: events can be accepted")
async def readyz(request: Request) -> JSONResponse:
    """200 when a Kafka broker answers a metadata request, else 503."""
    state: GatewayState = request.app.state.gateway
    if await state.publisher.ready():
        return JSONResponse({"status": "ready", "kafka": "ok"})
    return JSONResponse(
        {"status": "not ready", "kafka": "unreachable"},
        status_code=503,
        headers={"Retry-After": str(state.settings.retry_after_s)},
    )


@router.get("/metrics", summary="Prometheus metrics")
async def prometheus_metrics() -> Response:
    """Prometheus text exposition, summed over every worker process when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Multiprocess mode (see ``__main__``): each worker writes its values to
        # files; a registry built per scrape reads and adds them all up.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
