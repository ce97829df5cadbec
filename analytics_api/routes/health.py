"""Liveness, readiness and metrics: unauthenticated, for orchestrators and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from analytics_api.state import AnalyticsState
from schemas.web import metrics_response

router = APIRouter()


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    """Always 200 while the process serves HTTP."""
    return {"status": "ok"}


@router.get("/readyz", summary="PostgreSQL answers")
async def readyz(request: Request) -> JSONResponse:
    """200 when PostgreSQL answers ``SELECT 1``, else 503."""
    state: AnalyticsState = request.app.state.analytics
    if await state.reader.ping():
        return JSONResponse({"status": "ready", "database": "ok"})
    return JSONResponse(
        {"status": "not ready", "database": "unreachable"},
        status_code=503,
        headers={"Retry-After": "2"},
    )


@router.get("/metrics", summary="Prometheus metrics")
async def prometheus_metrics() -> Response:
    """Prometheus text exposition, summed over every worker process when there are several."""
    return metrics_response()
