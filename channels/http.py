"""What every HTTP channel shares: a client under the URL policy, pinned requests, error mapping.

A channel names its destination URL and how to check it; this module resolves it once, posts to
the pinned address, and turns whatever httpx raises into the channel error taxonomy without
ever quoting the URL (it may carry a key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr, field_validator

from channels.base import ChannelSettings
from channels.errors import DeliveryError, PermanentError, Reason, TransientError
from pipeline.outbound import (
    AllowList,
    Destination,
    PinnedRequest,
    ResolveFailed,
    Resolver,
    UrlRefused,
    pin,
    pinned_request,
)
from pipeline.redact import mask_url

# Reasons any HTTP channel can fail with, besides its provider's own.
HTTP_REASONS: tuple[Reason, ...] = (
    Reason.CONNECT_TIMEOUT,
    Reason.TIMEOUT,
    Reason.CONNECTION_ERROR,
    Reason.HTTP_429,
    Reason.HTTP_4XX,
    Reason.HTTP_5XX,
    Reason.BAD_RESPONSE,
    Reason.INVALID_ADDRESS,
    Reason.URL_REFUSED,
)

# Checked in order: ConnectTimeout and the other timeouts are TransportErrors too.
_TRANSPORT_REASONS: tuple[tuple[type[httpx.HTTPError], Reason], ...] = (
    (httpx.ConnectTimeout, Reason.CONNECT_TIMEOUT),
    (httpx.TimeoutException, Reason.TIMEOUT),
    (httpx.TransportError, Reason.CONNECTION_ERROR),
)


class _MaskUrls(logging.Filter):
    """Masks keys and passwords in httpx's per-request log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed record: logging reports it, with no URL of ours
        record.msg, record.args = mask_url(message), ()
        return True


_MASK_URLS = _MaskUrls()


class PolicySettings(ChannelSettings):
    """Settings of a channel that calls URLs: the hosts it may call, checked at load.

    A subclass names its allowlist setting and redeclares `allowed_hosts` with its env name.
    """

    allowed_hosts_setting: ClassVar[str]
    allowed_hosts: str = ""

    @field_validator("allowed_hosts")
    @classmethod
    def _allowlist(cls, value: str) -> str:
        AllowList.parse(value, cls.allowed_hosts_setting)  # raises naming the bad entry
        return value

    @property
    def allowlist(self) -> AllowList:
        """The hosts this channel may call."""
        return AllowList.parse(self.allowed_hosts, self.allowed_hosts_setting)

    def refuse_unless_allowed(
        self, setting: str, url: SecretStr, check: Callable[[str, AllowList], object]
    ) -> None:
        """Raises ValueError naming the setting when check refuses its URL; the message never
        quotes the URL (a secret), and the CLI prints only the message of a settings error."""
        value = url.get_secret_value()
        if not value:
            return
        try:
            check(value, self.allowlist)
        except UrlRefused as exc:
            raise ValueError(f"{setting} is refused: {exc}") from None


def policy_client(timeout: timedelta, connections: int) -> httpx.AsyncClient:
    """Returns a client for policy-checked destinations: no proxy environment, no redirects."""
    # httpx logs every request URL at INFO; keys travel in URLs (filters are a set: once).
    logging.getLogger("httpx").addFilter(_MASK_URLS)
    return httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        timeout=timeout.total_seconds(),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


def refused(what: str, exc: UrlRefused) -> PermanentError:
    """The error for a destination the URL policy refuses (the message never holds the URL)."""
    return PermanentError(Reason.URL_REFUSED, f"{what} refused: {exc}")


async def pinned(
    url: str, check: Callable[[str], Destination], resolver: Resolver, what: str
) -> PinnedRequest:
    """Checks url again and resolves it once, so the request reaches the address checked."""
    try:
        destination = check(url)
        address = await pin(destination, resolver)
    except UrlRefused as exc:
        raise refused(what, exc) from None
    except ResolveFailed as exc:
        raise TransientError(Reason.CONNECTION_ERROR, str(exc)) from None
    return pinned_request(destination, address)


async def request(
    client: httpx.AsyncClient,
    method: str,
    target: PinnedRequest,
    **kwargs: Any,
) -> httpx.Response:
    """Sends one request to a pinned target; raises a DeliveryError for transport failures."""
    headers = {**target.headers, **kwargs.pop("headers", {})}
    try:
        response = await client.request(
            method, target.url, headers=headers, extensions=target.extensions, **kwargs
        )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        error = transport_error(exc)
    else:
        return response
    # Raised outside the except block: httpx exceptions carry the URL, so none is chained.
    raise error


def transport_error(exc: httpx.HTTPError | httpx.InvalidURL) -> DeliveryError:
    """Maps an httpx failure to an error naming only its class (httpx messages hold the URL)."""
    detail = type(exc).__name__
    if isinstance(exc, httpx.InvalidURL):
        return PermanentError(Reason.INVALID_ADDRESS, detail)
    for kind, reason in _TRANSPORT_REASONS:
        if isinstance(exc, kind):
            return TransientError(reason, detail)
    # DecodingError and friends: the server answered, but not in a form we can read.
    return TransientError(Reason.BAD_RESPONSE, detail)


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """Returns the response body as a JSON object, or None when it is not one."""
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
