"""The gateway refuses to start when the fast path could not serve an ingest route as FastAPI would.

The fast path runs only ``require_api_key`` and the endpoint; a route needing
more (another dependency, a parameter, a sync endpoint, a serialized result,
its own body limit) must stop the gateway before it serves, not be skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response

from deploy.local.services import ROOT, free_port
from ingest_gateway.app import create_app
from ingest_gateway.routes import ingest
from ingest_gateway.settings import GatewaySettings
from schemas.web import require_api_key
from tests.conftest import API_KEY


def _settings(fast_path: bool) -> GatewaySettings:
    # No Kafka is needed: building the app does not connect.
    return GatewaySettings(
        api_keys=API_KEY, kafka_bootstrap_servers="127.0.0.1:9", fast_path=fast_path
    )


async def _audit(request: Request) -> None:
    """A dependency the fast path would skip."""


async def _accepted(request: Request) -> Response:
    return Response(status_code=202)


def _router(**route: Any) -> Callable[[], APIRouter]:
    """A ``/v1`` router behind ``require_api_key`` with one ``POST /v1/ingest``."""

    def build() -> APIRouter:
        options = {"endpoint": _accepted, "path": "/ingest", **route}
        router = APIRouter(prefix="/v1", dependencies=options.pop("dependencies", None))
        router.add_api_route(methods=["POST"], **options)
        return router

    return build


async def _with_query(request: Request, source: str = "") -> Response:
    return Response(status_code=202)


async def _with_body(request: Request, event: dict[str, Any]) -> Response:
    return Response(status_code=202)


async def _with_tasks(request: Request, tasks: BackgroundTasks) -> Response:
    return Response(status_code=202)


async def _with_response(request: Request, response: Response) -> Response:
    return response


async def _with_path(request: Request, kind: str) -> Response:
    return Response(status_code=202)


def _sync(request: Request) -> Response:
    return Response(status_code=202)


async def _returns_dict(request: Request) -> dict[str, int]:
    return {"accepted": 1}


KEY = [Depends(require_api_key)]
REFUSED = {
    "another-dependency": (
        _router(dependencies=[*KEY, Depends(_audit)]),
        "its dependencies are not require_api_key alone",
    ),
    "no-key-check": (_router(), "its dependencies are not require_api_key alone"),
    "query-parameter": (_router(dependencies=KEY, endpoint=_with_query), "more than the request"),
    "body-parameter": (_router(dependencies=KEY, endpoint=_with_body), "more than the request"),
    "background-tasks": (_router(dependencies=KEY, endpoint=_with_tasks), "more than the request"),
    "response-parameter": (
        _router(dependencies=KEY, endpoint=_with_response),
        "more than the request",
    ),
    "path-parameter": (
        _router(dependencies=KEY, endpoint=_with_path, path="/ingest/{kind}"),
        "more than the request",
    ),
    "sync-endpoint": (_router(dependencies=KEY, endpoint=_sync), "is not async"),
    "returns-a-dict": (
        _router(dependencies=KEY, endpoint=_returns_dict),
        "not declared to return a Response",
    ),
    "own-body-limit": (
        _router(dependencies=KEY, max_body_size=1024),
        "its own max_body_size",
    ),
}


@pytest.mark.parametrize(("build", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_gateway_refuses_to_build_with_a_route_the_fast_path_cannot_serve(
    monkeypatch: pytest.MonkeyPatch, build: Callable[[], APIRouter], reason: str
) -> None:
    monkeypatch.setattr(ingest, "router", build())
    with pytest.raises(ValueError, match=r"^POST /v1/ingest") as refused:
        create_app(_settings(fast_path=True))
    assert reason in str(refused.value)
    # FastAPI alone serves such a route.
    assert create_app(_settings(fast_path=False))
    # The control: the gateway's own routes build with the fast path.
    monkeypatch.undo()
    assert create_app(_settings(fast_path=True))


REFUSING_GATEWAY = """
from fastapi import APIRouter, Depends, Request, Response

from ingest_gateway.__main__ import main
from ingest_gateway.routes import ingest
from schemas.web import require_api_key


async def audit(request: Request) -> None:
    pass


router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key), Depends(audit)])


@router.post("/ingest")
async def ingest_one(request: Request) -> Response:
    return Response(status_code=202)


ingest.router = router
raise SystemExit(main())
"""


def test_gateway_process_refuses_to_start_and_never_serves() -> None:
    env = dict(
        os.environ,
        GATEWAY_API_KEYS=API_KEY,
        GATEWAY_PORT=str(free_port()),
        GATEWAY_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
    )
    refused = subprocess.run(
        [sys.executable, "-c", REFUSING_GATEWAY],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1, refused.stderr.decode()
    assert b"POST /v1/ingest: its dependencies are not require_api_key alone" in refused.stderr
    assert b"Uvicorn running" not in refused.stderr
