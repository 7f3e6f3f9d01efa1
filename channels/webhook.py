"""The outbound webhook channel: a signed JSON POST to a global or a recipient's own URL.

A receiver verifies `X-Tocsin-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` by computing
the HMAC with WEBHOOK_SECRET over `"<t>." + the raw body`, comparing in constant time, and
rejecting a `t` too far from its own clock (a replayed request). 2xx is delivered; 429 and
5xx are retried (no sooner than a Retry-After); any other status is a permanent failure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

from pydantic import AliasChoices, Field, SecretStr, model_validator

from channels.base import (
    Channel,
    ChannelContext,
    ChannelUnavailable,
    Contact,
    Delivery,
    SecretParts,
)
from channels.errors import PermanentError, Reason, classify_http, parse_retry_after
from channels.http import HTTP_REASONS, PolicySettings, pinned, policy_client, refused, request
from pipeline.clock import Clock
from pipeline.outbound import Destination, Resolver, UrlRefused, check_url

SIGNATURE_HEADER = "X-Tocsin-Signature"
URL_MAX = 2048


class WebhookSettings(PolicySettings):
    """WEBHOOK_*: where to post, the signing secret, and the hosts posts may go to."""

    allowed_hosts_setting = "WEBHOOK_ALLOWED_HOSTS"

    enabled: bool = Field(False, validation_alias=AliasChoices("WEBHOOK_ENABLED"))
    # A URL may carry a token in its path or query: it is a secret like the signing key.
    url: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices("WEBHOOK_URL"))
    secret: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices("WEBHOOK_SECRET"))
    # Nothing is allowed until named (see pipeline/outbound.py for the entry syntax).
    allowed_hosts: str = Field("", validation_alias=AliasChoices("WEBHOOK_ALLOWED_HOSTS"))
    concurrency: int = Field(8, ge=1, validation_alias=AliasChoices("WEBHOOK_CONCURRENCY"))

    @model_validator(mode="after")
    def _url(self) -> WebhookSettings:
        self.refuse_unless_allowed("WEBHOOK_URL", self.url, check_url)
        return self


def _check_url(url: str, settings: Any) -> str:
    url = url.strip()
    try:
        check_url(url, settings.allowlist)
    except UrlRefused as exc:
        raise ValueError(f"refused: {exc}") from None
    return url


def _split(url: str) -> tuple[str, str]:
    """(origin, the rest): a token may sit in the path or the query, so all of it is secret."""
    scheme, _, rest = url.partition("://")
    host, slash, tail = rest.partition("/")
    return f"{scheme}://{host}", f"{slash}{tail}"


def _join(origin: str, rest: str) -> str:
    return origin + (rest if rest.startswith("/") or not rest else f"/{rest}")


# A recipient's own endpoint, posted to instead of WEBHOOK_URL.
WEBHOOK_URL = Contact(
    "webhook_url",
    "an own webhook URL (https, a host in WEBHOOK_ALLOWED_HOSTS)",
    _check_url,
    max_length=URL_MAX,
    secret=SecretParts(split=_split, join=_join),
)


@dataclass(frozen=True)
class WebhookPayload:
    """One post: the destination (a secret, never printed) and the exact bytes to sign."""

    url: str = field(repr=False)
    body: bytes


class WebhookChannel(Channel[WebhookSettings]):
    """Posts each notification as signed JSON; opt-in: only recipients who choose it get it."""

    name = "webhook"
    settings_class = WebhookSettings
    contacts = (WEBHOOK_URL,)
    by_default = False
    reasons: ClassVar[tuple[Reason, ...]] = (
        *HTTP_REASONS,
        Reason.NO_CONTACT,
        Reason.CHANNEL_DISABLED,
    )

    def __init__(
        self, settings: WebhookSettings, clock: Clock, resolver: Resolver, timeout: timedelta
    ) -> None:
        self._default_url = settings.url.get_secret_value()
        self._secret = settings.secret.get_secret_value().encode()
        self._allow = settings.allowlist
        self._clock = clock
        self._resolver = resolver
        self._client = policy_client(timeout, settings.concurrency)

    @classmethod
    def from_settings(cls, settings: WebhookSettings, context: ChannelContext) -> WebhookChannel:
        if not settings.enabled or not settings.secret.get_secret_value():
            raise ChannelUnavailable(
                "set WEBHOOK_ENABLED=true and WEBHOOK_SECRET (receivers verify with it)"
            )
        return cls(settings, context.clock, context.resolver, context.send_timeout)

    def render(self, delivery: Delivery) -> WebhookPayload:
        url = delivery.contacts.get(WEBHOOK_URL.kind) or self._default_url
        if not url:
            raise PermanentError(
                Reason.NO_CONTACT, "no webhook URL: set WEBHOOK_URL or the user's webhook_url"
            )
        self._check(url)
        return WebhookPayload(url, encode(delivery))

    def _check(self, url: str) -> Destination:
        try:
            return check_url(url, self._allow)
        except UrlRefused as exc:
            raise refused("webhook URL", exc) from None

    async def send(self, payload: WebhookPayload) -> None:
        target = await pinned(payload.url, self._check_url, self._resolver, "webhook URL")
        timestamp = int(self._clock.now().timestamp())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self._secret, timestamp, payload.body),
        }
        response = await request(
            self._client, "POST", target, content=payload.body, headers=headers
        )
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        error = classify_http(response.status_code, retry_after)
        if error is not None:
            raise error

    def _check_url(self, url: str) -> Destination:
        return check_url(url, self._allow)

    async def aclose(self) -> None:
        await self._client.aclose()


def encode(delivery: Delivery) -> bytes:
    """The JSON body: the notification's id (a receiver's idempotency key) and the alert."""
    document = {
        "id": delivery.notification_id,
        "attempt": delivery.attempt,
        "alert": {
            "id": delivery.alert_id,
            "title": delivery.title,
            "body": delivery.body,
            "severity": delivery.severity,
            "created_at": delivery.alert_created_at.isoformat(),
        },
        "recipient": delivery.username,
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """`t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>." + body>`."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"
