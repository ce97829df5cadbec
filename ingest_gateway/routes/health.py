"""Liveness, readiness and metrics: unauthenticated, for orchestrators and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ingest_gateway.state import GatewayState
from schemas.web import metrics_response

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
    return metrics_response()
