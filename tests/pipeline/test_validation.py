"""Input validation: every validator's good values, and each bad value's one-line message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from channels.registry import CHANNEL_NAMES
from pipeline.models import Severity
from pipeline.outbound import AllowList
from pipeline.quiet_hours import QuietHours
from pipeline.validation import (
    BODY_MAX_BYTES,
    TITLE_MAX,
    InputError,
    content_error,
    validate_body,
    validate_email,
    validate_recipients,
    validate_robot_url,
    validate_severity,
    validate_timezone,
    validate_title,
    validate_username,
    validate_wecom_userid,
)
from tests.support.channels import pinned

# The registered channels' parser, as the CLI and the API use it.
validate_channels = pinned().parse
ALLOWED = AllowList.parse("qyapi.weixin.qq.com,http://127.0.0.1:8080", "WECOM_ALLOWED_HOSTS")


def validate_webhook_url(url: str) -> str:
    return validate_robot_url(url, ALLOWED)


SECRET = "0a1b2c3d-SECRET-KEY"
WEBHOOK = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={SECRET}"

GOOD: list[tuple[Callable[[Any], Any], Any, Any]] = [
    (validate_username, "alice", "alice"),
    (validate_username, " bob.smith@corp-1_x ", "bob.smith@corp-1_x"),
    (validate_username, "a" * 64, "a" * 64),
    (validate_email, "Alice@Example.COM", "Alice@example.com"),
    (validate_email, " ops+alerts@example.org ", "ops+alerts@example.org"),
    (validate_timezone, "Asia/Shanghai", "Asia/Shanghai"),
    (validate_timezone, " UTC ", "UTC"),
    (validate_timezone, "America/Argentina/Buenos_Aires", "America/Argentina/Buenos_Aires"),
    (validate_severity, "info", Severity.INFO),
    (validate_severity, "WARNING", Severity.WARNING),
    (validate_severity, " Critical ", Severity.CRITICAL),
    (validate_title, "  Disk full on db-1  ", "Disk full on db-1"),
    (validate_title, "t" * TITLE_MAX, "t" * TITLE_MAX),
    (validate_title, "磁盘已满", "磁盘已满"),
    (validate_body, "\nline one\nline two\n", "line one\nline two"),
    (validate_body, "x" * BODY_MAX_BYTES, "x" * BODY_MAX_BYTES),
    (validate_body, "one\r\ntwo\rthree\r\n", "one\ntwo\nthree"),
    (validate_body, "col\tcol\n\tindented", "col\tcol\n\tindented"),
    (validate_body, "<@all> [x](http://e) 🚨", "<@all> [x](http://e) 🚨"),
    (validate_wecom_userid, "zhangsan", "zhangsan"),
    (validate_wecom_userid, " a.b_c@d-E9 ", "a.b_c@d-E9"),
    (validate_wecom_userid, "allison", "allison"),
    (validate_wecom_userid, "u" * 64, "u" * 64),
    (validate_channels, "system,email", frozenset({"system", "email"})),
    (validate_channels, " WeCom , system,", frozenset({"wecom", "system"})),
    (validate_recipients, ["alice"], ["alice"]),
    (validate_recipients, ["bob", "alice", "bob", " alice "], ["bob", "alice"]),
    (validate_webhook_url, f" {WEBHOOK} ", WEBHOOK),
    (
        validate_webhook_url,
        "http://127.0.0.1:8080/cgi-bin/webhook/send?key=k",
        "http://127.0.0.1:8080/cgi-bin/webhook/send?key=k",
    ),
]

BAD: list[tuple[Callable[[Any], Any], Any, str]] = [
    (validate_username, "", "username '' is invalid: use 1-64 letters, digits"),
    (validate_username, "a" * 65, "is invalid: use 1-64 letters"),
    (validate_username, "bob smith", "username 'bob smith' is invalid"),
    (validate_username, "bob\nsmith", "username 'bob\\nsmith' is invalid"),
    (validate_username, "bøb", "username 'bøb' is invalid"),
    (validate_email, "not-an-email", "email 'not-an-email' is invalid: "),
    (validate_email, "a@b@c", "email 'a@b@c' is invalid: "),
    (validate_email, "alice@localhost", "email 'alice@localhost' is invalid: "),
    (validate_email, "", "email '' is invalid: "),
    (validate_email, "alice@example.com\r\nBcc: eve@example.com", "email 'alice@example.com\\r"),
    (validate_timezone, "Mars/Base", "unknown time zone 'Mars/Base': use an IANA name such as"),
    (validate_timezone, "", "unknown time zone ''"),
    (validate_timezone, "asia/shanghai", "unknown time zone 'asia/shanghai'"),
    (validate_timezone, "America", "unknown time zone 'America'"),
    (validate_timezone, "../../etc/passwd", "unknown time zone '../../etc/passwd'"),
    (validate_timezone, "localtime", "unknown time zone 'localtime'"),
    (validate_timezone, "UTC\x00", "unknown time zone 'UTC\\x00'"),
    (
        validate_severity,
        "urgent",
        "severity 'urgent' is invalid: choose from info, warning, critical",
    ),
    (validate_severity, "", "severity '' is invalid"),
    (validate_title, "", "title must not be empty"),
    (validate_title, " \t ", "title must not be empty"),
    (validate_title, "Disk full\r\nBcc: eve@example.com", "title must be a single line"),
    (validate_title, "Disk\nfull", "title must be a single line"),
    (validate_title, "Disk\rfull", "title must be a single line"),
    (validate_title, "Disk\u2028full", "title must be a single line"),
    (validate_title, "t" * (TITLE_MAX + 1), "title is 201 characters: the limit is 200"),
    (validate_title, "bad \udcff byte", "title must be valid UTF-8 text"),
    (validate_title, "Disk\x00full", "title contains control character U+0000 at position 4"),
    (validate_title, "Disk\tfull", "title contains control character U+0009 at position 4"),
    (validate_title, " esc\x1b[31m", "title contains control character U+001B at position 4"),
    (validate_title, "del\x7f", "title contains control character U+007F at position 3"),
    (validate_title, "csi\x9b", "title contains control character U+009B at position 3"),
    (validate_title, "Disk\x85full", "title must be a single line (no CR, LF or other line"),
    (validate_title, "end\n", "line breaks): U+000A at position 3"),
    (validate_title, "non \ufffe", "title contains noncharacter U+FFFE at position 4"),
    (validate_title, "non \U0010ffff", "title contains noncharacter U+10FFFF at position 4"),
    (validate_body, "", "body must not be empty"),
    (validate_body, " \n\t ", "body must not be empty"),
    (
        validate_body,
        "x" * (BODY_MAX_BYTES + 1),
        "body is 65537 bytes of UTF-8: the limit is 65536 bytes",
    ),
    # 32,769 characters, but two bytes each in UTF-8.
    (validate_body, "é" * 32_769, "body is 65538 bytes of UTF-8: the limit is 65536 bytes"),
    (validate_body, "bad \udcff byte", "body must be valid UTF-8 text"),
    (validate_body, "x" * 12 + "\x00y", "body contains control character U+0000 at position 12"),
    (validate_body, "trailing NUL\x00", "body contains control character U+0000 at position 12"),
    (validate_body, "page\x0cbreak", "body contains control character U+000C at position 4"),
    (validate_body, "\x1b[2J cleared", "body contains control character U+001B at position 0"),
    (validate_body, "nel\x85", "body contains control character U+0085 at position 3"),
    (validate_body, "\ufdd0", "body contains noncharacter U+FDD0 at position 0"),
    (validate_wecom_userid, "all", "wecom_userid 'all' is reserved: it mentions the whole group"),
    (validate_wecom_userid, " @ALL ", "wecom_userid '@ALL' is reserved"),
    (validate_wecom_userid, "bob> <@all", "wecom_userid 'bob> <@all' is invalid: use 1-64"),
    (validate_wecom_userid, "<@all>", "wecom_userid '<@all>' is invalid"),
    (validate_wecom_userid, "a b", "wecom_userid 'a b' is invalid"),
    (validate_wecom_userid, "u" * 65, "is invalid: use 1-64 letters"),
    (validate_wecom_userid, "张三", "wecom_userid '张三' is invalid"),
    (validate_wecom_userid, "", "wecom_userid '' is invalid"),
    (validate_channels, "fax", f"unknown channel 'fax': choose from {', '.join(CHANNEL_NAMES)}"),
    (validate_channels, "system,sms", "unknown channel 'sms'"),
    (validate_channels, "", f"channels must name at least one of {', '.join(CHANNEL_NAMES)}"),
    (validate_channels, " , ", "channels must name at least one of"),
    (validate_recipients, [], "recipients must name at least one username"),
    (validate_recipients, ["alice", "bob smith"], "username 'bob smith' is invalid"),
    (validate_recipients, [""], "username '' is invalid"),
    (validate_webhook_url, "", "webhook URL must not be empty"),
    (validate_webhook_url, "qyapi.weixin.qq.com/send?key=x", "webhook URL is refused: "),
]


def parse_quiet_hours(text: str) -> QuietHours:
    return QuietHours.parse(text, "Asia/Shanghai")


BAD += [
    (parse_quiet_hours, "22:00 to 07:00", "quiet hours must look like 22:00-07:00"),
    (parse_quiet_hours, "25:00-07:00", "quiet hours time 25:00 is out of range"),
    (parse_quiet_hours, "07:00-07:00", "quiet hours 07:00-07:00 start and end at the same time"),
]

# Every one of these carries the secret key, which must appear in no error.
BAD_WEBHOOKS = [
    f"ftp://qyapi.weixin.qq.com/send?key={SECRET}",
    f"javascript:alert('{SECRET}')",
    f"https:///send?key={SECRET}",
    f"https://qyapi.weixin.qq.com:99999/send?key={SECRET}",
    f"https://qyapi.weixin.qq.com:port/send?key={SECRET}",
    f"https://[::1/send?key={SECRET}",
    f"https://qyapi.weixin.qq.com/send?key={SECRET} trailing",
    f"https://qyapi.weixin.qq.com/send?key={SECRET}\r\nX-Injected: 1",
    f"https://qyapi.weixin.qq.com/send?pad={'p' * 500}&key={SECRET}",
]


def _id(value: object) -> str:
    # The same in every pytest-xdist worker: a function by name (its repr holds an address), a
    # set sorted (its order follows the worker's hash seed).
    if callable(value):
        text = getattr(value, "__name__", "")
    elif isinstance(value, set | frozenset):
        text = repr(sorted(value))
    else:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@pytest.mark.parametrize(("validator", "value", "expected"), GOOD, ids=_id)
def test_good_values_pass(validator: Callable[[Any], Any], value: Any, expected: Any) -> None:
    assert validator(value) == expected


@pytest.mark.parametrize(("validator", "value", "message"), BAD, ids=_id)
def test_bad_values_raise_one_line_input_errors(
    validator: Callable[[Any], Any], value: Any, message: str
) -> None:
    with pytest.raises(InputError) as caught:
        validator(value)
    text = str(caught.value)
    assert text.startswith(message) or message in text
    assert "\n" not in text
    assert "\r" not in text
    assert len(text) < 200


@pytest.mark.parametrize("url", BAD_WEBHOOKS, ids=range(len(BAD_WEBHOOKS)))
def test_webhook_url_errors_never_show_the_url(url: str) -> None:
    with pytest.raises(InputError) as caught:
        validate_webhook_url(url)
    assert str(caught.value).startswith("webhook URL ")
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)
    # Nothing chained either: a traceback would print the original exception's message.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


CONTROL_CHARACTERS = [chr(code) for code in (*range(0x20), *range(0x7F, 0xA0))]


@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=lambda char: f"U+{ord(char):04X}")
def test_every_control_character_is_refused_in_titles(char: str) -> None:
    with pytest.raises(InputError, match=f"U\\+{ord(char):04X} at position 1"):
        validate_title(f"a{char}b")


@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=lambda char: f"U+{ord(char):04X}")
def test_bodies_refuse_every_control_character_but_lf_cr_and_tab(char: str) -> None:
    if char in "\n\r\t":
        assert validate_body(f"a{char}b") in ("a\nb", "a\tb")
        assert content_error("body", f"a{char}b", multiline=True) is None
        return
    with pytest.raises(InputError, match=f"body contains control character U\\+{ord(char):04X}"):
        validate_body(f"a{char}b")


def test_input_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="severity"):
        validate_severity("loud")


def test_long_input_is_cut_short_in_messages() -> None:
    with pytest.raises(InputError) as caught:
        validate_timezone("Z" * 1000)
    assert len(str(caught.value)) < 120
