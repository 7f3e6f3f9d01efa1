"""Checks every piece of user input once, at the edge, so the pipeline only sees valid values."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError
from email_validator import validate_email as _check_email

from channels.wecom_url import check_robot_url
from pipeline.models import Severity
from pipeline.outbound import AllowList, UrlRefused

USERNAME_MAX = 64
TITLE_MAX = 200
BODY_MAX_BYTES = 65_536
WEBHOOK_URL_MAX = 512
DEDUP_KEY_MAX = 200

_USERNAME = re.compile(rf"[A-Za-z0-9._@-]{{1,{USERNAME_MAX}}}")
WECOM_USERID_MAX = 64
_WECOM_USERID = re.compile(rf"[A-Za-z0-9_.@-]{{1,{WECOM_USERID_MAX}}}")
# Userids that would mention the whole group: only --mention-all on a critical alert may.
_WECOM_EVERYONE = frozenset({"all", "@all"})
# Everything str.splitlines() breaks on: any of these would end an e-mail Subject header early.
_LINE_BREAKS = frozenset("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
# Unicode noncharacters: U+FDD0-U+FDEF and the last two code points of each of the 17 planes.
_NONCHARACTERS = r"\ufdd0-\ufdef" + "".join(
    rf"\U{plane << 16 | 0xFFFE:08x}\U{plane << 16 | 0xFFFF:08x}" for plane in range(17)
)
# A title refuses every control character (Unicode Cc), every line break and noncharacters;
# a body the same but for its own line breaks (LF, CR) and tabs.
_TITLE_REFUSED = re.compile(rf"[\x00-\x1f\x7f-\x9f\u2028\u2029{_NONCHARACTERS}]")
_BODY_REFUSED = re.compile(rf"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_NONCHARACTERS}]")
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


def validate_wecom_userid(userid: str) -> str:
    """Returns the WeCom userid stripped, or raises InputError unless it may be @mentioned."""
    userid = userid.strip()
    if userid.lower() in _WECOM_EVERYONE:
        raise InputError(
            f"wecom_userid {_shown(userid)} is reserved: it mentions the whole group "
            "(use --mention-all on a critical alert)"
        )
    if _WECOM_USERID.fullmatch(userid) is None:
        raise InputError(
            f"wecom_userid {_shown(userid)} is invalid: use 1-{WECOM_USERID_MAX} letters, "
            "digits, '.', '_', '@' or '-'"
        )
    return userid


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


def content_error(field: str, text: str, *, multiline: bool) -> str | None:
    """Returns why text may not be an alert's title (or body, if multiline), or None if it may.

    Positions count characters from 0 in text as given.
    """
    match = (_BODY_REFUSED if multiline else _TITLE_REFUSED).search(text)
    if match is None:
        return None
    char = match.group()
    where = f"U+{ord(char):04X} at position {match.start()}"
    if not multiline and char in _LINE_BREAKS:
        return f"{field} must be a single line (no CR, LF or other line breaks): {where}"
    kind = "control character" if ord(char) <= 0x9F else "noncharacter"
    return f"{field} contains {kind} {where}"


def drop_refused_characters(text: str, *, multiline: bool) -> str:
    """Returns text without the characters content_error refuses (for rows written around it)."""
    return (_BODY_REFUSED if multiline else _TITLE_REFUSED).sub("", text)


def validate_title(text: str) -> str:
    """Returns the title stripped, or raises InputError unless it is one non-empty short line."""
    title = text.strip()
    if not title:
        raise InputError("title must not be empty")
    # Checked before stripping: a control character is refused, not quietly cut off an edge.
    problem = content_error("title", text, multiline=False)
    if problem is not None:
        raise InputError(problem)
    if len(title) > TITLE_MAX:
        raise InputError(f"title is {len(title)} characters: the limit is {TITLE_MAX}")
    _utf8_size("title", title)
    return title


def validate_body(text: str) -> str:
    """Returns the body stripped with CRLF and CR made LF, or raises InputError if it is refused.

    Refused: empty, over 64 KiB of UTF-8, or holding a control character other than LF, CR and
    tab (or a noncharacter).
    """
    body = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not body:
        raise InputError("body must not be empty")
    problem = content_error("body", text, multiline=True)
    if problem is not None:
        raise InputError(problem)
    size = _utf8_size("body", body)
    if size > BODY_MAX_BYTES:
        raise InputError(f"body is {size} bytes of UTF-8: the limit is {BODY_MAX_BYTES} bytes")
    return body


def validate_dedup_key(text: str) -> str:
    """Returns the dedup key stripped, or raises InputError unless it is 1-200 printable chars."""
    key = text.strip()
    if not key or len(key) > DEDUP_KEY_MAX:
        raise InputError(f"dedup key must be 1-{DEDUP_KEY_MAX} characters")
    if not key.isprintable():
        raise InputError("dedup key must not contain control characters")
    return key


def validate_recipients(names: list[str]) -> list[str]:
    """Returns the usernames valid and deduplicated in their first order, or raises InputError."""
    unique = list(dict.fromkeys(validate_username(name) for name in names))
    if not unique:
        raise InputError("recipients must name at least one username")
    return unique


def validate_robot_url(url: str, allow: AllowList) -> str:
    """Returns a WeCom robot URL stripped if the URL policy allows it; errors never show it."""
    # The URL carries the webhook's secret key: no message (or chained exception) may include it.
    url = url.strip()
    if not url:
        raise InputError("webhook URL must not be empty")
    if len(url) > WEBHOOK_URL_MAX:
        raise InputError(f"webhook URL is longer than {WEBHOOK_URL_MAX} characters")
    try:
        check_robot_url(url, allow)
    except UrlRefused as exc:
        refused = str(exc)
    else:
        return url
    # Raised outside the except block, so no traceback can show a chained exception.
    raise InputError(f"webhook URL is refused: {refused}")
