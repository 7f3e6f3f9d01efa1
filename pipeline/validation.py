"""Checks every piece of user input once, at the edge, so the pipeline only sees valid values."""

from __future__ import annotations

import re
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError
from email_validator import validate_email as _check_email

from pipeline.models import Severity

USERNAME_MAX = 64
TITLE_MAX = 200
BODY_MAX_BYTES = 65_536
WEBHOOK_URL_MAX = 512

_USERNAME = re.compile(rf"[A-Za-z0-9._@-]{{1,{USERNAME_MAX}}}")
# Everything str.splitlines() breaks on: any of these would end an e-mail Subject header early.
_LINE_BREAKS = frozenset("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
# Keys ZoneInfo loads that are not IANA zones: "localtime" is whatever the host happens to use.
_NOT_IANA = frozenset({"localtime", "posixrules", "Factory"})
_SHOWN_MAX = 40


class InputError(ValueError):
    """Rejects one input value with a one-line message naming the field and what is allowed."""


def _shown(text: str) -> str:
    """Quotes user input for an error message, escaped onto one line and cut short."""
    return repr(text if len(text) <= _SHOWN_MAX else text[:_SHOWN_MAX] + "…")


def _utf8_size(field: str, text: str) -> int:
    """Returns the UTF-8 size of text in bytes, or raises InputError for unencodable text."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InputError(f"{field} must be valid UTF-8 text") from None


def validate_username(name: str) -> str:
    """Returns the username stripped, or raises InputError unless it is 1-64 allowed characters."""
    name = name.strip()
    if _USERNAME.fullmatch(name) is None:
        raise InputError(
            f"username {_shown(name)} is invalid: use 1-{USERNAME_MAX} letters, digits, "
            "'.', '_', '@' or '-'"
        )
    return name


def validate_email(address: str) -> str:
    """Returns the normalized e-mail address, or raises InputError saying why it is invalid."""
    try:
        return _check_email(address.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        reason = " ".join(str(exc).split())
        raise InputError(f"email {_shown(address)} is invalid: {reason}") from None


def load_timezone(name: str) -> ZoneInfo:
    """Returns the IANA time zone called name, or raises InputError suggesting a valid one."""
    key = name.strip()
    try:
        if key in _NOT_IANA:
            raise ZoneInfoNotFoundError(key)
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a key naming a directory of the zone database, such as "America".
        raise InputError(
            f"unknown time zone {_shown(name)}: use an IANA name such as Asia/Shanghai"
        ) from None


def validate_timezone(name: str) -> str:
    """Returns the IANA time zone name stripped, or raises InputError if no such zone exists."""
    return load_timezone(name).key


def validate_severity(text: str) -> Severity:
    """Returns the Severity named by text in any case, or raises InputError listing the choices."""
    try:
        return Severity(text.strip().lower())
    except ValueError:
        choices = ", ".join(severity.value for severity in Severity)
        raise InputError(f"severity {_shown(text)} is invalid: choose from {choices}") from None


def validate_title(text: str) -> str:
    """Returns the title stripped, or raises InputError unless it is one non-empty short line."""
    title = text.strip()
    if not title:
        raise InputError("title must not be empty")
    if any(char in _LINE_BREAKS for char in title):
        raise InputError("title must be a single line (no CR, LF or other line breaks)")
    if len(title) > TITLE_MAX:
        raise InputError(f"title is {len(title)} characters: the limit is {TITLE_MAX}")
    _utf8_size("title", title)
    return title


def validate_body(text: str) -> str:
    """Returns the body stripped, or raises InputError if it is empty or over 64 KiB of UTF-8."""
    body = text.strip()
    if not body:
        raise InputError("body must not be empty")
    size = _utf8_size("body", body)
    if size > BODY_MAX_BYTES:
        raise InputError(f"body is {size} bytes of UTF-8: the limit is {BODY_MAX_BYTES} bytes")
    return body


def validate_channels(text: str) -> frozenset[str]:
    """Returns the channel names in "system,email", or raises InputError naming the allowed ones."""
    # Imported here: the registry imports every channel module, which the other validators
    # (and the quiet-hours module, through this one) have no need of.
    from channels.registry import CHANNEL_NAMES, parse_channels

    try:
        names = parse_channels(text)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not names:
        raise InputError(f"channels must name at least one of {', '.join(CHANNEL_NAMES)}")
    return names


def validate_recipients(names: list[str]) -> list[str]:
    """Returns the usernames valid and deduplicated in their first order, or raises InputError."""
    unique = list(dict.fromkeys(validate_username(name) for name in names))
    if not unique:
        raise InputError("recipients must name at least one username")
    return unique


def validate_webhook_url(url: str) -> str:
    """Returns the http(s) webhook URL stripped, or raises InputError that never shows the URL."""
    # The URL carries the webhook's secret key: no message (or chained exception) may include it.
    url = url.strip()
    if not url:
        raise InputError("webhook URL must not be empty")
    if len(url) > WEBHOOK_URL_MAX:
        raise InputError(f"webhook URL is longer than {WEBHOOK_URL_MAX} characters")
    if any(char.isspace() or not char.isprintable() for char in url):
        raise InputError("webhook URL must not contain spaces or control characters")
    if not _is_http_url(url):
        raise InputError("webhook URL must be an http:// or https:// URL with a host")
    return url


def _is_http_url(url: str) -> bool:
    """Returns whether url parses as http or https with a host and a valid port."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
