"""Gateway errors; one handler in ``app.py`` turns each into its HTTP answer.

A missing or unknown API key is :class:`schemas.web.Unauthorized`, shared with the analytics API.
"""

from __future__ import annotations

from schemas.web import ApiError, InvalidRequest, Unavailable


class GatewayError(ApiError):
    """Root of the gateway's errors; ``app.py`` answers each with its status and JSON body.

    ``events`` is how many events the refused request held, where that is known
    (counted in ``energy_gateway_events_rejected_total``); 0 otherwise.
    """

    events: int = 0

    def holding(self, events: int) -> GatewayError:
        """This error, saying the refused request held ``events`` events."""
        self.events = events
        return self


class PayloadTooLarge(GatewayError):
    """The body (or its event count) is over the configured limit; nothing was read past it."""

    status = 413
    code = "payload_too_large"


class ClientClosed(GatewayError):
    """The client closed the connection before its body was read whole; nothing was published.

    Answered with 499 (nginx's "client closed request"), which no client
    receives: it is what the request metrics and the log record.
    """

    status = 499
    code = "client_closed_request"


class UnsupportedMediaType(GatewayError):
    """A batch body that is neither JSON nor NDJSON."""

    status = 415
    code = "unsupported_media_type"


class InvalidPayload(GatewayError, InvalidRequest):
    """Bad JSON or broken rules (422): ``errors`` names each bad index and field. None published."""


class KafkaUnavailable(GatewayError, Unavailable):
    """Kafka did not acknowledge in time, or is known to be down (503); retrying after
    ``Retry-After`` is safe.

    Some events of the request may have been stored already; a retry cannot
    double-count them because history is unique per device and timestamp.
    """

    code = "kafka_unavailable"


class Overloaded(GatewayError, Unavailable):
    """This worker holds as many requests, or request bytes, as it may (503); retry later.

    Nothing of the request was read or published.
    """

    code = "overloaded"
