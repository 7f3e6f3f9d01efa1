"""Table tests of the pure failure classifiers: SMTP codes, HTTP statuses, WeCom errcodes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from channels.errors import (
    WECOM_COOL_DOWN,
    DeliveryError,
    PermanentError,
    RateLimited,
    Reason,
    TransientError,
    classify_http,
    classify_smtp,
    classify_wecom,
    parse_retry_after,
)

SMTP_TABLE = [
    (421, TransientError, Reason.SMTP_4XX),
    (450, TransientError, Reason.SMTP_4XX),
    (451, TransientError, Reason.SMTP_4XX),
    (452, TransientError, Reason.SMTP_4XX),
    (454, TransientError, Reason.SMTP_4XX),
    (530, PermanentError, Reason.SMTP_AUTH),
    (534, PermanentError, Reason.SMTP_AUTH),
    (535, PermanentError, Reason.SMTP_AUTH),
    (550, PermanentError, Reason.SMTP_5XX),
    (552, PermanentError, Reason.SMTP_5XX),
    (553, PermanentError, Reason.SMTP_5XX),
    (554, PermanentError, Reason.SMTP_5XX),
    (999, TransientError, Reason.CONNECTION_ERROR),
    (220, TransientError, Reason.CONNECTION_ERROR),
]


@pytest.mark.parametrize(("code", "kind", "reason"), SMTP_TABLE)
def test_classify_smtp(code: int, kind: type[DeliveryError], reason: Reason) -> None:
    error = classify_smtp(code, "server said no")
    assert type(error) is kind
    assert error.reason is reason
    assert str(code) in error.detail


def test_classify_smtp_bounds_detail() -> None:
    assert len(classify_smtp(550, "x" * 5000).detail) <= 300


HTTP_TABLE = [
    (200, None, None),
    (204, None, None),
    (299, None, None),
    (301, PermanentError, Reason.HTTP_4XX),
    (400, PermanentError, Reason.HTTP_4XX),
    (401, PermanentError, Reason.HTTP_4XX),
    (403, PermanentError, Reason.HTTP_4XX),
    (404, PermanentError, Reason.HTTP_4XX),
    (408, TransientError, Reason.TIMEOUT),
    (425, TransientError, Reason.TIMEOUT),
    (429, RateLimited, Reason.HTTP_429),
    (500, TransientError, Reason.HTTP_5XX),
    (502, TransientError, Reason.HTTP_5XX),
    (503, TransientError, Reason.HTTP_5XX),
    (504, TransientError, Reason.HTTP_5XX),
]


@pytest.mark.parametrize(("status", "kind", "reason"), HTTP_TABLE)
def test_classify_http(
    status: int, kind: type[DeliveryError] | None, reason: Reason | None
) -> None:
    error = classify_http(status)
    if kind is None:
        assert error is None
        return
    assert type(error) is kind
    assert error is not None and error.reason is reason


def test_classify_http_429_carries_retry_after() -> None:
    error = classify_http(429, timedelta(seconds=7))
    assert isinstance(error, RateLimited)
    assert error.retry_after == timedelta(seconds=7)


def test_classify_http_5xx_carries_retry_after_as_a_transient_error() -> None:
    error = classify_http(503, timedelta(seconds=90))
    assert isinstance(error, TransientError) and not isinstance(error, RateLimited)
    assert error.retry_after == timedelta(seconds=90)


def test_classify_http_429_without_retry_after_waits_a_minute() -> None:
    error = classify_http(429)
    assert isinstance(error, RateLimited)
    assert error.retry_after == timedelta(seconds=60)


# Every errcode in shared/reference/wecom-robot.md, plus the template_card range ends.
WECOM_TABLE = [
    (-1, TransientError, Reason.WECOM_BUSY),
    (6000, TransientError, Reason.WECOM_6000),
    (45009, RateLimited, Reason.WECOM_45009),
    (45033, RateLimited, Reason.WECOM_45033),
    (93000, PermanentError, Reason.WECOM_93000),
    (93004, PermanentError, Reason.WECOM_93004),
    (93008, PermanentError, Reason.WECOM_93008),
    (40008, PermanentError, Reason.WECOM_40008),
    (44004, PermanentError, Reason.WECOM_44004),
    (45002, PermanentError, Reason.WECOM_45002),
    (40033, PermanentError, Reason.WECOM_40033),
    (42027, PermanentError, Reason.WECOM_OTHER),
    (42038, PermanentError, Reason.WECOM_OTHER),
    (42049, PermanentError, Reason.WECOM_OTHER),
    (12345, PermanentError, Reason.WECOM_OTHER),
]


def test_classify_wecom_success_is_none() -> None:
    assert classify_wecom(0, "ok") is None


@pytest.mark.parametrize(("errcode", "kind", "reason"), WECOM_TABLE)
def test_classify_wecom(errcode: int, kind: type[DeliveryError], reason: Reason) -> None:
    error = classify_wecom(errcode, "whatever")
    assert type(error) is kind
    assert error is not None and error.reason is reason
    assert f"errcode {errcode}" in error.detail


@pytest.mark.parametrize("errcode", [45009, 45033])
def test_classify_wecom_rate_limits_cool_down_a_minute(errcode: int) -> None:
    error = classify_wecom(errcode)
    assert isinstance(error, RateLimited)
    assert error.retry_after == WECOM_COOL_DOWN == timedelta(seconds=60)


@pytest.mark.parametrize("errmsg", ["ok", "", "system busy", "invalid webhook url"])
def test_classify_wecom_decides_on_errcode_not_errmsg(errmsg: str) -> None:
    assert classify_wecom(0, errmsg) is None
    error = classify_wecom(93000, errmsg)
    assert isinstance(error, PermanentError) and error.reason is Reason.WECOM_93000


RETRY_AFTER_TABLE = [
    (None, None),
    ("0", timedelta(0)),
    ("7", timedelta(seconds=7)),
    (" 120 ", timedelta(seconds=120)),
    ("1.5", timedelta(seconds=1.5)),
    ("-3", None),
    ("soon", None),
    ("", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", None),
]


@pytest.mark.parametrize(("header", "expected"), RETRY_AFTER_TABLE)
def test_parse_retry_after(header: str | None, expected: timedelta | None) -> None:
    assert parse_retry_after(header) == expected


def test_retryable_flags() -> None:
    assert TransientError(Reason.TIMEOUT).retryable
    assert RateLimited(Reason.RATE_LIMITED).retryable
    assert not PermanentError(Reason.SMTP_5XX).retryable
