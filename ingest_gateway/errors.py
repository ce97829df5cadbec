"""Gateway errors; one handler in ``app.py`` turns each into its HTTP answer."""

from __future__ import annotations

from schemas.web import ApiError


class GatewayError(ApiError):
    """Root of the gateway's errors; ``app.py`` answers each with its status and JSON body."""


class Unauthorized(GatewayError):
    """No API key, or not one we know."""

    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        """Tell the client which scheme to use."""
        return {"WWW-Authenticate": "Bearer"}


class PayloadTooLarge(GatewayError):
    """The body (or its event count) is over the configured limit; nothing was read past it."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    """A batch body that is neither JSON nor NDJSON."""

    status = 415
    code = "unsupported_media_type"


class InvalidPayload(GatewayError):
    """Bad JSON or broken rules; ``errors`` names each event index and field. Nothing published."""

    status = 422
    code = "validation_failed"


class KafkaUnavailable(GatewayError):
    """Kafka did not acknowledge in time. Safe to retry the whole request after ``Retry-After``.

    Some events of the request may have been stored already; a retry cannot
    double-count them because history is unique per device and timestamp.
    """

    status = 503
    code = "kafka_unavailable"
    retriable = True

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """When to come back."""
        return {"Retry-After": str(self.retry_after_s)}
