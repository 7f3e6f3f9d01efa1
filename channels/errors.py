"""The one error taxonomy every channel speaks, and the pure classifiers that map to it."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum


class Reason(StrEnum):
    """Bounded reasons for a failed, retried, suppressed or dead notification."""

    # transport
    CONNECT_TIMEOUT = "connect_timeout"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    TLS_ERROR = "tls_error"
    # SMTP
    SMTP_4XX = "smtp_4xx"
    SMTP_5XX = "smtp_5xx"
    SMTP_AUTH = "smtp_auth"
    SMTP_RECIPIENT_REFUSED = "smtp_recipient_refused"
    # HTTP
    HTTP_429 = "http_429"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    BAD_RESPONSE = "bad_response"
    # WeCom errcodes (HTTP 200 bodies)
    WECOM_BUSY = "wecom_-1"
    WECOM_6000 = "wecom_6000"
    WECOM_45009 = "wecom_45009"
    WECOM_45033 = "wecom_45033"
    WECOM_93000 = "wecom_93000"
    WECOM_93004 = "wecom_93004"
    WECOM_93008 = "wecom_93008"
    WECOM_40008 = "wecom_40008"
    WECOM_44004 = "wecom_44004"
    WECOM_45002 = "wecom_45002"
    WECOM_40033 = "wecom_40033"
    WECOM_OTHER = "wecom_other"
    # WeCom app messages (the application API)
    WECOM_TOKEN = "wecom_token"  # noqa: S105 - a reason label, not a token
    WECOM_CREDENTIALS = "wecom_credentials"
    WECOM_60020 = "wecom_60020"
    WECOM_NO_RECIPIENT = "wecom_no_recipient"
    WECOM_INVALID_USER = "wecom_invalid_user"
    # local decisions
    RATE_LIMITED = "rate_limited"
    CHANNEL_DISABLED = "channel_disabled"
    NO_CONTACT = "no_contact"
    INVALID_ADDRESS = "invalid_address"
    # the outbound URL policy refused the destination (not allowlisted, private address, ...)
    URL_REFUSED = "url_refused"
    # the alert's title or body holds control characters (a row written around validation)
    INVALID_CONTENT = "invalid_content"
    RENDER_ERROR = "render_error"
    INTERNAL_ERROR = "internal_error"
    EXPIRED = "expired"
    # suppression
    OPTED_OUT = "opted_out"
    ALERT_RESOLVED = "alert_resolved"
    ALERT_EXPIRED = "alert_expired"
    RECIPIENT_REMOVED = "recipient_removed"
    PURGED = "purged"
    DUPLICATE = "duplicate"


class DeliveryError(Exception):
    """A failed send, with a bounded reason and a human detail that holds no secret."""

    retryable = False

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


class TransientError(DeliveryError):
    """Worth trying again on the retry schedule, and no sooner than retry_after if given (a
    503's Retry-After); each try spends an attempt."""

    retryable = True

    def __init__(self, reason: Reason, detail: str = "", retry_after: timedelta | None = None):
        super().__init__(reason, detail)
        self.retry_after = retry_after


class RateLimited(DeliveryError):
    """The provider asked us to slow down; retried after retry_after, not counted as an attempt."""

    retryable = True

    def __init__(self, reason: Reason, detail: str = "", retry_after: timedelta | None = None):
        super().__init__(reason, detail)
        self.retry_after = retry_after or timedelta(seconds=60)


class PermanentError(DeliveryError):
    """Will fail the same way every time; the notification is dead now."""


_WECOM_TRANSIENT = {-1: Reason.WECOM_BUSY, 6000: Reason.WECOM_6000}
_WECOM_RATE_LIMITED = {45009: Reason.WECOM_45009, 45033: Reason.WECOM_45033}
_WECOM_PERMANENT = {
    93000: Reason.WECOM_93000,
    93004: Reason.WECOM_93004,
    93008: Reason.WECOM_93008,
    40008: Reason.WECOM_40008,
    44004: Reason.WECOM_44004,
    45002: Reason.WECOM_45002,
    40033: Reason.WECOM_40033,
}
# WeCom's documented cool-down for the robot's 20 messages/minute.
WECOM_COOL_DOWN = timedelta(seconds=60)


def classify_wecom(errcode: int, errmsg: str = "") -> DeliveryError | None:
    """Maps a WeCom robot errcode to an error, or None for errcode 0 (errmsg is only detail)."""
    if errcode == 0:
        return None
    detail = f"errcode {errcode}: {errmsg}"[:300]
    if errcode in _WECOM_TRANSIENT:
        return TransientError(_WECOM_TRANSIENT[errcode], detail)
    if errcode in _WECOM_RATE_LIMITED:
        return RateLimited(_WECOM_RATE_LIMITED[errcode], detail, WECOM_COOL_DOWN)
    return PermanentError(_WECOM_PERMANENT.get(errcode, Reason.WECOM_OTHER), detail)


# The access token was refused (invalid, expired, 42009): fetch a new one once and send again.
WECOM_TOKEN_ERRCODES = frozenset({40014, 42001, 42009})
_WECOM_APP_PERMANENT = {
    40001: Reason.WECOM_CREDENTIALS,  # invalid secret
    40013: Reason.WECOM_CREDENTIALS,  # invalid corp ID
    40056: Reason.WECOM_CREDENTIALS,  # invalid agent ID
    41001: Reason.WECOM_TOKEN,  # no token sent: a bug
    60020: Reason.WECOM_60020,  # the server's address is not trusted by the application
    81013: Reason.WECOM_NO_RECIPIENT,
    82001: Reason.WECOM_NO_RECIPIENT,
}


def classify_wecom_app(errcode: int, errmsg: str = "") -> DeliveryError | None:
    """Maps a WeCom application-API errcode to an error, or None for 0; the rest as the robot's.

    A refused token is transient here: the channel has already fetched a new one and tried again.
    """
    detail = f"errcode {errcode}: {errmsg}"[:300]
    if errcode in WECOM_TOKEN_ERRCODES:
        return TransientError(Reason.WECOM_TOKEN, detail)
    if errcode in _WECOM_APP_PERMANENT:
        return PermanentError(_WECOM_APP_PERMANENT[errcode], detail)
    return classify_wecom(errcode, errmsg)


def classify_http(status: int, retry_after: timedelta | None = None) -> DeliveryError | None:
    """Maps an HTTP status to an error, or None for 2xx."""
    if 200 <= status < 300:
        return None
    detail = f"HTTP {status}"
    if status == 429:
        return RateLimited(Reason.HTTP_429, detail, retry_after)
    if status >= 500 or status in (408, 425):
        reason = Reason.HTTP_5XX if status >= 500 else Reason.TIMEOUT
        return TransientError(reason, detail, retry_after)
    return PermanentError(Reason.HTTP_4XX, detail)


def classify_smtp(code: int, message: str = "") -> DeliveryError:
    """Maps an SMTP reply code to an error: 4xx transient, 5xx permanent."""
    detail = f"SMTP {code}: {message}"[:300]
    if 400 <= code < 500:
        return TransientError(Reason.SMTP_4XX, detail)
    if code in (530, 534, 535):
        return PermanentError(Reason.SMTP_AUTH, detail)
    if 500 <= code < 600:
        return PermanentError(Reason.SMTP_5XX, detail)
    return TransientError(Reason.CONNECTION_ERROR, detail)


def parse_retry_after(value: str | None) -> timedelta | None:
    """Reads an HTTP Retry-After header given in seconds; dates and junk give None."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return timedelta(seconds=seconds) if seconds >= 0 else None
