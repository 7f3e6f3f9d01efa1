"""The outbound URL policy every HTTP channel goes through: allowlist, https, one pinned address.

A destination URL comes from settings or from a recipient, so it is untrusted: without a policy
it would let anyone who can save a recipient make Tocsin probe internal services (SSRF). The
policy is checked when a URL is saved, when settings load, and again right before each request,
so a row written straight into the database cannot get around it.

- The host must be on the channel's allowlist (`<CHANNEL>_ALLOWED_HOSTS`): an entry is `host`,
  `host:port` (both https), or `http://host:port` (the only way to allow plain http).
- The host is a canonical DNS name or IP literal: `2130706433`, `0x7f000001`, `127.1` and `0`
  are refused before anything resolves them.
- No user info, no fragment; no redirects and no proxy environment (the client is built so).
- The name is resolved once, every address it has must be public, and the request goes to that
  address (the name stays in the Host header and TLS SNI), so DNS cannot change the answer
  between the check and the connection. Loopback, private, link-local, multicast, unspecified,
  reserved and IPv4-mapped addresses are refused unless an entry names that very address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

DEFAULT_PORTS = {"https": 443, "http": 80}
# RFC 1123 labels; the last label must not be all digits, so "2130706433" is no name.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_NUMERIC = re.compile(r"[0-9]+")


class UrlRefused(ValueError):
    """A destination the policy does not allow; the message never contains the URL itself."""


@dataclass(frozen=True)
class AllowEntry:
    """One allowlist entry: a host (name or IP literal), a scheme and a port."""

    scheme: str
    host: str
    port: int

    @property
    def address(self) -> IPAddress | None:
        """The IP the entry names, or None when it names a host."""
        return _ip_literal(self.host)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.scheme == "https" and self.port == DEFAULT_PORTS["https"]:
            return host
        return (
            f"{self.scheme}://{host}:{self.port}"
            if self.scheme == "http"
            else f"{host}:{self.port}"
        )


@dataclass(frozen=True)
class AllowList:
    """The hosts one channel may call."""

    setting: str
    entries: tuple[AllowEntry, ...]

    @classmethod
    def parse(cls, text: str, setting: str) -> AllowList:
        """Parses "host, host:port, http://host:port"; raises ValueError naming a bad entry."""
        entries = tuple(_entry(item.strip(), setting) for item in text.split(",") if item.strip())
        return cls(setting, entries)

    def find(self, scheme: str, host: str, port: int) -> AllowEntry | None:
        """Returns the entry allowing scheme://host:port, or None."""
        wanted = AllowEntry(scheme, host, port)
        return next((entry for entry in self.entries if entry == wanted), None)

    def __str__(self) -> str:
        return ",".join(str(entry) for entry in self.entries)


@dataclass(frozen=True)
class Destination:
    """A URL the policy allowed by its syntax and allowlist; `pin` decides its address."""

    scheme: str
    host: str
    port: int
    path: str
    query: str
    entry: AllowEntry

    @property
    def origin(self) -> str:
        """scheme://host[:port], the port only when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = DEFAULT_PORTS[self.scheme] == self.port
        return f"{self.scheme}://{host}" + ("" if default else f":{self.port}")

    @property
    def url(self) -> str:
        """The URL as it was allowed (secrets in its query included)."""
        return self.origin + self.path + (f"?{self.query}" if self.query else "")


@dataclass(frozen=True)
class PinnedRequest:
    """Where to send a request so that it reaches the checked address and nothing else."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, Any]


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def canonical_host(host: str) -> str:
    """Returns host lower-cased if it is a DNS name or a canonical IP literal, else raises."""
    host = host.lower().rstrip(".") if host else ""
    address = _ip_literal(host)
    if address is not None:
        if str(address) != host:
            raise UrlRefused(f"host {host!r} is not written canonically")
        return host
    labels = host.split(".")
    if (
        not host
        or len(host) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or _NUMERIC.fullmatch(labels[-1])
    ):
        raise UrlRefused(f"host {host[:64]!r} is not a DNS name or an IP address")
    return host


def _entry(text: str, setting: str) -> AllowEntry:
    scheme = "https"
    rest = text
    if "://" in text:
        scheme, _, rest = text.partition("://")
        scheme = scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"{setting} entry {text!r}: the scheme must be http or https")
        if scheme == "http" and not re.search(r":\d+/?$", rest):
            raise ValueError(f"{setting} entry {text!r}: an http entry names its port")
    rest = rest.rstrip("/")
    try:
        parts = urlsplit(f"//{rest}")
        port = parts.port or DEFAULT_PORTS[scheme]
        host = canonical_host(parts.hostname or "")
    except ValueError as exc:
        raise ValueError(f"{setting} entry {text!r} is invalid: {exc}") from None
    if parts.username is not None or parts.path or parts.query or parts.fragment:
        raise ValueError(f"{setting} entry {text!r}: use host, host:port or http://host:port")
    return AllowEntry(scheme, host, port)


def check_url(url: str, allow: AllowList) -> Destination:
    """Returns the URL's destination if its syntax and host pass the policy, else UrlRefused."""
    if any(char.isspace() or not char.isprintable() for char in url):
        raise UrlRefused("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("the URL does not parse (bad host or port)") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise UrlRefused("the URL must be https (or http to a host allowed as http://host:port)")
    if "@" in parts.netloc:
        raise UrlRefused("the URL must not carry user info (user:password@)")
    if parts.fragment or url.endswith("#"):
        raise UrlRefused("the URL must not have a fragment (#...)")
    host = canonical_host(parts.hostname or "")
    port = port or DEFAULT_PORTS[scheme]
    entry = allow.find(scheme, host, port)
    if entry is None:
        shown = AllowEntry(scheme, host, port)
        raise UrlRefused(f"{shown} is not allowed by {allow.setting} ({allow or 'empty'})")
    return Destination(scheme, host, port, parts.path or "/", parts.query, entry)


def refused_address(address: IPAddress) -> str | None:
    """Returns why an address may not be called unless an entry names it, or None if public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return "an IPv4-mapped address"
    for kind in ("loopback", "private", "link_local", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    if not address.is_global:
        return "not a public address"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolves host with the system resolver, once, to every address it has."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class ResolveFailed(OSError):
    """The destination's name did not resolve (worth trying again later)."""


async def pin(destination: Destination, resolver: Resolver = system_resolver) -> IPAddress:
    """Resolves the destination once and returns the address to connect to, or UrlRefused."""
    named = destination.entry.address
    if named is not None:
        return named  # the operator named this very address: loopback or private is allowed
    try:
        found = await resolver(destination.host, destination.port)
    except OSError as exc:
        raise ResolveFailed(f"cannot resolve {destination.host}: {exc.strerror or exc}") from None
    addresses = [ipaddress.ip_address(item.split("%", 1)[0]) for item in found]
    if not addresses:
        raise ResolveFailed(f"cannot resolve {destination.host}: no address")
    # Every address must pass: a name that also resolves inside would be a way in.
    for address in addresses:
        why = refused_address(address)
        if why is not None:
            raise UrlRefused(
                f"{destination.host} resolves to {why}; to allow it, the allowlist must name "
                "that address itself (e.g. http://10.0.0.5:8080)"
            )
    return addresses[0]


def pinned_request(destination: Destination, address: IPAddress) -> PinnedRequest:
    """Returns the request target for destination sent to address, keeping Host and SNI."""
    literal = f"[{address}]" if address.version == 6 else str(address)
    default = DEFAULT_PORTS[destination.scheme] == destination.port
    host_header = destination.host if default else f"{destination.host}:{destination.port}"
    url = f"{destination.scheme}://{literal}:{destination.port}{destination.path}"
    if destination.query:
        url += f"?{destination.query}"
    extensions: dict[str, Any] = {}
    if destination.scheme == "https":
        extensions["sni_hostname"] = destination.host
    return PinnedRequest(url, {"Host": host_header}, extensions)
