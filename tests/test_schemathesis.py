"""Schemathesis over both services: every documented operation, every check, zero failures.

Each service runs in process (schemathesis' ASGI transport, the app's lifespan
included) against this module's real Kafka topics and PostgreSQL database,
with requests generated from its own ``/openapi.json``: valid ones must be
accepted, invalid ones refused, and every answer must match its documented
status, content type, headers and schema.

Schemathesis is taught what JSON Schema cannot say:

- ``recent-date-time``, the format of a reading's time, is a window around
  the receiving service's clock: its strategy draws times inside it.
- ``link-date-time``, the format of a link's ``validFrom`` and ``validTo``, is
  the wider window of links (up to a year ahead): its strategy draws inside it.
- ``ndjson``, the format of an NDJSON batch, is lines of readings: its
  strategy draws such lines, and the ``application/x-ndjson`` serializer sends
  the text as it is (any other value as its JSON text, as a client would).
- ``silence-duration``, the format of ``for`` of the silent-device list, is an
  ISO 8601 duration within bounds (a minute to 366 days): its strategy draws
  such durations, spelled as they come (``PT90M`` as well as ``PT1H30M``).
- A window of the analytics API relates ``from`` and ``to`` (``from`` before
  ``to``, at most 31 days): valid cases get their times ordered and brought
  inside one window (see :func:`_window_query`). Invalid cases are sent as drawn.
- The daily series' ``from`` and ``to`` are local dates (``to`` exclusive, at
  most 92 days): valid cases get them ordered and brought inside that span
  (see :func:`_day_query`); ``iana-time-zone``, the format of its ``tz``, is
  drawn from the zone database's names.
- The fleet views take a local day (``date`` in ``tz``) instead of ``from``/``to``,
  only where that day runs over whole UTC hours: valid cases naming one get it
  alone, in the last year, in such a zone (see :func:`_fleet_day_query`).
- A link's ``validTo`` is later than its ``validFrom``: valid cases get them ordered.
- An OCPP sampled value that becomes part of a reading (energy, voltage) must
  have the measurand's unit and a value inside the readings' ranges: valid
  cases get such units and values (see :func:`_ocpp_readable`).

No check is excluded. The totals (requests per service, failures) are
printed at the end of the module.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo, available_timezones

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from schemathesis import Case, GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.python.asgi import get_client
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from analytics_api.days import local_days
from analytics_api.silence import DURATION_FORMAT, LONGEST, SHORTEST
from schemas import Stream
from schemas.events import DeviceId
from tests.conftest import API_KEY, ModuleEnv, wait_for, write_batches

#: Generated cases per operation (and generation phase); about 1,000 requests per service.
EXAMPLES = 230
#: What each service was sent and how many checks failed, printed at the end.
TOTALS: Counter[str] = Counter()
FAILURES: Counter[str] = Counter()

RECENT_FORMAT = "recent-date-time"
LINK_FORMAT = "link-date-time"
NDJSON_FORMAT = "ndjson"
ZONE_FORMAT = "iana-time-zone"
#: Inside the gateway's window (5 minutes ahead, 90 days back) with a margin for the
#: time between drawing a case and the gateway validating it.
EARLIEST = timedelta(days=89)
LATEST = timedelta(minutes=4)
#: Inside the links' window (366 days ahead), with the same margin.
LINK_LATEST = timedelta(days=365)


def _render(delta_s: int, micro: int, offset_min: int | None) -> str:
    """A time ``delta_s`` seconds from now, in UTC with ``Z`` or at ``offset_min`` minutes."""
    moment = (datetime.now(UTC) + timedelta(seconds=delta_s)).replace(microsecond=micro)
    if offset_min is None:
        return moment.isoformat().replace("+00:00", "Z")
    return moment.astimezone(timezone(timedelta(minutes=offset_min))).isoformat()


def recent_times(latest: timedelta = LATEST) -> st.SearchStrategy[str]:
    """RFC 3339 times from ``EARLIEST`` ago to ``latest`` ahead, measured when drawn."""
    return st.builds(
        _render,
        st.integers(-int(EARLIEST.total_seconds()), int(latest.total_seconds())),
        st.integers(0, 999_999),
        st.none() | st.integers(-14 * 60, 14 * 60),
    )


_IDS = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), min_size=1, max_size=64
)
_METERS = st.fixed_dictionaries(
    {
        "meterId": _IDS,
        "kwhConsumedAc": st.floats(0, 10),
        "voltage": st.floats(0, 1000),
        "timestamp": recent_times(),
    }
)
_VEHICLES = st.fixed_dictionaries(
    {
        "vehicleId": _IDS,
        "soc": st.floats(0, 100),
        "kwhDeliveredDc": st.floats(0, 10),
        "batteryTemp": st.floats(-40, 100),
        "timestamp": recent_times(),
    }
)


def _spell(days: int, hours: int, minutes: int, seconds: int) -> str:
    time = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    return "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")


def silences() -> st.SearchStrategy[str]:
    """ISO 8601 durations from a minute to 366 days, in days, hours, minutes and seconds."""
    parts = st.tuples(
        st.integers(0, 366), st.integers(0, 48), st.integers(0, 120), st.integers(0, 120)
    )
    return parts.filter(
        lambda p: (
            SHORTEST <= timedelta(days=p[0], hours=p[1], minutes=p[2], seconds=p[3]) <= LONGEST
        )
    ).map(lambda p: _spell(*p))


def ndjson_batches() -> st.SearchStrategy[str]:
    """NDJSON text of 1 to 20 valid readings, one per line."""
    lines = st.lists(st.one_of(_METERS, _VEHICLES), min_size=1, max_size=20)
    return lines.map(lambda events: "\n".join(orjson.dumps(e).decode() for e in events) + "\n")


schemathesis.openapi.format(RECENT_FORMAT, recent_times())
schemathesis.openapi.format(LINK_FORMAT, recent_times(LINK_LATEST))
schemathesis.openapi.format(NDJSON_FORMAT, ndjson_batches())
schemathesis.openapi.format(DURATION_FORMAT, silences())
schemathesis.openapi.format(ZONE_FORMAT, st.sampled_from(sorted(available_timezones())))


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    """NDJSON text as it is; any other value as its JSON text (a client sending a wrong body)."""
    # The standard encoder: schemathesis draws integers past 64 bits, which orjson refuses.
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


def _positive(case: Case[Any]) -> bool:
    return case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE


def _window_query(query: dict[str, Any]) -> None:
    """Move a valid case's ``from``/``to`` into one window ending in the last 30 days.

    Each is replaced by a time derived from the one drawn (so cases still
    differ), ``from`` before ``to`` and at most 30 days apart.
    """
    now = datetime.now(UTC)
    spots = {
        name: abs(hash(str(query[name]))) % (29 * 86400)
        for name in ("from", "to")
        if query.get(name)
    }
    if not spots:
        return
    to = now - timedelta(seconds=min(spots.values()) // 2)
    if "to" in spots:
        query["to"] = to.isoformat()
    if "from" in spots:
        query["from"] = (to - timedelta(seconds=1 + spots["from"] // 2)).isoformat()


def _day_query(query: dict[str, Any]) -> None:
    """Move a valid case's ``from``/``to`` dates into at most 92 days ending in the last year.

    As :func:`_window_query`, derived from the dates drawn; a lone ``from`` lies 1 to
    88 days before today (UTC), before tomorrow (its default ``to``) in any zone and
    at most 92 days from it.
    """
    spots = {name: abs(hash(str(query[name]))) for name in ("from", "to") if query.get(name)}
    if not spots:
        return
    today = datetime.now(UTC).date()
    if "to" not in spots:
        query["from"] = (today - timedelta(days=1 + spots["from"] % 88)).isoformat()
        return
    to = today - timedelta(days=spots["to"] % 365)
    query["to"] = to.isoformat()
    if "from" in spots:
        query["from"] = (to - timedelta(days=1 + spots["from"] % 92)).isoformat()


def _fleet_day_query(query: dict[str, Any]) -> None:
    """A valid fleet case naming a local day (``date``, ``tz``) made one: no ``from``/``to``
    beside it, a date in the last year, and a zone whose day runs over whole UTC hours
    (else UTC)."""
    query.pop("from", None)
    query.pop("to", None)
    spot = abs(hash(str(query.get("date")))) % 365
    day = datetime.now(UTC).date() - timedelta(days=spot)
    query["date"] = day.isoformat()
    zone = query.get("tz")
    if isinstance(zone, str) and zone in available_timezones():
        (local,) = local_days(ZoneInfo(zone), day, day + timedelta(days=1))
        if not any(b.minute or b.second for b in (local.start, local.end)):
            return
    query["tz"] = "UTC"


def _link_order(body: dict[str, Any]) -> None:
    """A valid link's ``validTo`` moved after its ``validFrom`` when it was not."""
    start, end = body.get("validFrom"), body.get("validTo")
    if not (isinstance(start, str) and isinstance(end, str)):
        return
    try:
        start_at, end_at = datetime.fromisoformat(start), datetime.fromisoformat(end)
        if end_at <= start_at:
            body["validFrom"], body["validTo"] = end, start
            if end_at == start_at:  # one instant, perhaps spelled two ways ("Z", "+00:00")
                del body["validTo"]
    except ValueError:
        return


#: A valid OCPP case's stored measurands (the default, energy, first), their unit and bound.
_OCPP_STORED = {
    None: ("Wh", 3000.0),
    "Energy.Active.Import.Register": ("Wh", 3000.0),
    "Energy.Active.Import.Interval": ("Wh", 3000.0),
    "Voltage": ("V", 1000.0),
}


def _ocpp_readable(body: dict[str, Any], version: str) -> None:
    """A valid OCPP payload's stored values made readable: the measurand's unit (no
    multiplier) and a value from 0 to its bound, three phases of energy staying
    within one reading's cap."""
    entries = body.get("meterValue")
    for entry in entries if isinstance(entries, list) else []:
        for sampled in entry.get("sampledValue", []) if isinstance(entry, dict) else []:
            if not isinstance(sampled, dict) or sampled.get("measurand") not in _OCPP_STORED:
                continue
            unit, bound = _OCPP_STORED[sampled.get("measurand")]
            try:
                number = abs(float(sampled["value"])) % bound
            except (KeyError, TypeError, ValueError):
                continue
            if version == "1.6":
                sampled["unit"], sampled["value"] = unit, f"{number:.3f}"
            else:
                sampled["unitOfMeasure"], sampled["value"] = {"unit": unit}, number


@schemathesis.hook
def map_case(context: Any, case: Case[Any]) -> Case[Any]:
    """Teach valid cases the cross-field rules (see the module docstring)."""
    if not _positive(case):
        return case
    if case.query and case.operation.path.endswith("/daily"):
        _day_query(case.query)
    elif case.query and ("date" in case.query or "tz" in case.query):
        _fleet_day_query(case.query)
    elif case.query and ("from" in case.query or "to" in case.query):
        _window_query(case.query)
    if case.operation.path == "/v1/links" and isinstance(case.body, dict):
        _link_order(case.body)
    if case.operation.path.startswith("/v1/ocpp/") and isinstance(case.body, dict):
        _ocpp_readable(case.body, case.operation.path.split("/")[3])
    return case


_DEVICE_ID: TypeAdapter[str] = TypeAdapter(DeviceId)
_ID_NAMES = ("vehicleId", "meterId", "chargePointId")


def _ids_valid(case: Case[Any]) -> bool:
    """Whether every device id of ``case`` matches the id pattern as ECMA-262 reads it.

    The pattern's ``\\p{C}`` and ``\\p{Z}`` (Unicode categories) are unknown to Python's
    ``re``, which schemathesis draws strings with: it draws ids the pattern refuses.
    """
    # Path parameters are kept percent-encoded, as they are sent.
    path = case.path_parameters or {}
    found = [unquote(v) if isinstance(v, str) else v for k, v in path.items() if k in _ID_NAMES]
    events = case.body if isinstance(case.body, list) else [case.body]
    found += [e[k] for e in events if isinstance(e, dict) for k in _ID_NAMES if k in e]
    try:
        for value in found:
            _DEVICE_ID.validate_python(value)
    except ValidationError:
        return False
    return True


def _all_checks() -> list[Any]:
    load_all_checks()
    return list(CHECKS.get_all())


@pytest.fixture(scope="module")
def seeded(env: ModuleEnv) -> None:
    """A vehicle ``V1`` and a meter ``M1``, linked, with an hour of readings."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    minutes = [start + timedelta(minutes=m) for m in range(60)]
    write_batches(env, Stream.VEHICLE, [[("V1", t, 50.0, 0.2, 30.0) for t in minutes]])
    write_batches(env, Stream.METER, [[("M1", t, 0.25, 230.0) for t in minutes]])
    from schemas import VehicleMeterLink

    link = VehicleMeterLink(vehicle_id="V1", meter_id="M1", valid_from=start - timedelta(hours=1))
    write_batches(env, Stream.LINKS, [[link]])


def _documented(app: Any) -> OpenApiSchema:
    """The OpenAPI document ``app`` serves, loaded for generation (nothing is started)."""
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES
    )
    # 413 Content Too Large is how HTTP refuses a body past a limit (a batch over maxItems).
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return schema


class _OneLifespan:
    """``app`` whose lifespan starts at the first startup and ends only with :meth:`close`.

    Schemathesis' pytest plugin ends every ASGI lifespan after each test item (one per
    operation) and starts it again for the next; the services open their Kafka producer
    and connection pool once per process, as a server runs them.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.stack = AsyncExitStack()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Requests go to the app; its lifespan is entered once, on the first startup."""
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.loop is None:
                    self.loop = asyncio.get_running_loop()
                    await self.stack.enter_async_context(self.app.router.lifespan_context(self.app))
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self) -> None:
        """End the app's lifespan, on the event loop that started it."""
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(self.stack.aclose(), self.loop).result(timeout=60)


def _running(app: Any, name: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """``app`` with its lifespan started on schemathesis' event loop, until the module ends."""
    served = _OneLifespan(app)
    with get_client(served) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200)
    try:
        yield served
    finally:
        served.close()
        line = f"schemathesis {name}: {TOTALS[name]} requests, {FAILURES[name]} failures"
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        assert capture is not None
        with capture.global_and_fixture_disabled():
            print(f"\n{line}")  # the totals belong in the suite's output


def _gateway_app(env: ModuleEnv | None) -> Any:
    from ingest_gateway.app import create_app
    from ingest_gateway.settings import GatewaySettings

    if env is None:
        return create_app(GatewaySettings(api_keys=API_KEY))
    return create_app(
        GatewaySettings(
            kafka_bootstrap_servers=env.services.kafka_bootstrap,
            meter_topic=env.topics.meter,
            vehicle_topic=env.topics.vehicle,
            links_topic=env.topics.links,
            api_keys=API_KEY,
        )
    )


def _analytics_app(env: ModuleEnv | None) -> Any:
    from analytics_api.app import create_app
    from analytics_api.settings import AnalyticsSettings

    url = env.reader_url if env is not None else "postgresql://nobody@127.0.0.1:1/none"
    return create_app(AnalyticsSettings(database_url=url, api_keys=API_KEY))


@pytest.fixture(scope="module")
def gateway_app(env: ModuleEnv, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The gateway, running on this module's topics."""
    yield from _running(_gateway_app(env), "gateway", request)


@pytest.fixture(scope="module")
def analytics_app(env: ModuleEnv, seeded: None, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The analytics API, running on this module's database."""
    yield from _running(_analytics_app(env), "analytics", request)


def _call(case: Case[Any], app: Any, service: str) -> None:
    """Send ``case`` to ``app`` and run every check on the answer.

    A case with an id the pattern refuses is not valid data, whatever schemathesis took
    it for (see :func:`_ids_valid`): it is sent, and every check but the one requiring
    valid data to be accepted runs on its answer.
    """
    checks = _all_checks()
    if not _ids_valid(case):
        checks.remove(positive_data_acceptance)
    TOTALS[service] += 1
    try:
        case.call_and_validate(
            headers={"Authorization": f"Bearer {API_KEY}"}, checks=checks, app=app
        )
    except BaseException:
        FAILURES[service] += 1
        raise


_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

gateway = _documented(_gateway_app(None))
analytics = _documented(_analytics_app(None))


@gateway.parametrize()
@_SETTINGS
def test_gateway(case: Case[Any], gateway_app: Any) -> None:
    _call(case, gateway_app, "gateway")


@analytics.parametrize()
@_SETTINGS
def test_analytics(case: Case[Any], analytics_app: Any) -> None:
    _call(case, analytics_app, "analytics")
