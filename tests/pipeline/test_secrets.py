"""Secrets in settings: URL passwords masked in every printout, redaction, scrubbed logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import structlog
from pydantic import SecretStr

from pipeline.app import secrets_of
from pipeline.config import Settings
from pipeline.logs import configure_logging, scrubber
from pipeline.redact import Redactor
from pipeline.secret_url import SecretUrl, mask_password, secret_values
from tests.support.channels import pinned
from tests.support.secrets import assert_no_secret

# (URL, what masked() shows, the password as it must never be shown); every password is
# distinctive and at least 8 characters long.
URLS = [
    pytest.param(
        "postgresql+asyncpg://tocsin:Planted-Pw-1a2b@db.internal:5432/tocsin",
        "postgresql+asyncpg://tocsin:***@db.internal:5432/tocsin",
        "Planted-Pw-1a2b",
        id="user-and-password",
    ),
    pytest.param(
        "redis://:Planted-Redis-3c4d@cache.internal:6379/0",
        "redis://:***@cache.internal:6379/0",
        "Planted-Redis-3c4d",
        id="no-user",
    ),
    pytest.param(
        "postgresql+asyncpg://u:Planted@At-5e6f@db.internal/tocsin",
        "postgresql+asyncpg://u:***@db.internal/tocsin",
        "Planted@At-5e6f",
        id="raw-at",
    ),
    pytest.param(
        "amqp://guest:Planted:Colon/Slash@7a8b@mq.internal:5672/vhost",
        "amqp://guest:***@mq.internal:5672/vhost",
        "Planted:Colon/Slash@7a8b",
        id="colon-slash-and-at",
    ),
    pytest.param(
        "postgresql+asyncpg://postgres:Planted-Enc%40%2F%3A9c0d@127.0.0.1:5432/test",
        "postgresql+asyncpg://postgres:***@127.0.0.1:5432/test",
        "Planted-Enc@/:9c0d",
        id="percent-encoded",
    ),
    pytest.param(
        "rediss://cache.internal:6380/0?password=Planted-Query-1e2f&ssl_cert_reqs=none",
        "rediss://cache.internal:6380/0?password=***&ssl_cert_reqs=none",
        "Planted-Query-1e2f",
        id="query-password",
    ),
]
PLAIN_URLS = [
    "sqlite+aiosqlite:///./tocsin.db",
    "sqlite+aiosqlite:////var/lib/tocsin/a@b.db",
    "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    "redis://127.0.0.1:6379/0",
    "memory://",
]


def forms(password: str) -> list[str]:
    """The password and its percent-encoded form (the way an encoded URL writes it)."""
    return [password, quote(password, safe="")]


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, metrics_port=-1, **values)


@pytest.mark.parametrize(("url", "masked", "password"), URLS)
def test_secret_url_masks_the_password_and_keeps_the_rest(
    url: str, masked: str, password: str
) -> None:
    secret = SecretUrl(url)
    assert secret.masked() == masked
    assert str(secret) == masked
    assert repr(secret) == f"SecretUrl({masked!r})"
    assert secret.get_secret_value() == url
    assert password in secret.secrets()


@pytest.mark.parametrize("url", PLAIN_URLS)
def test_a_url_without_a_password_is_shown_as_it_is(url: str) -> None:
    assert SecretUrl(url).masked() == url
    assert SecretUrl(url).secrets() == []


def test_secret_url_gives_the_encoded_and_decoded_password() -> None:
    url = SecretUrl("postgresql+asyncpg://postgres:Planted-pw%40x@127.0.0.1:5432/test")
    assert {"Planted-pw%40x", "Planted-pw@x"} <= set(url.secrets())


@pytest.mark.parametrize(("url", "masked", "password"), URLS)
@pytest.mark.parametrize("field", ["database_url", "queue_url"])
def test_settings_never_print_a_url_password(
    field: str, url: str, masked: str, password: str
) -> None:
    loaded = settings(**{field: url})
    shown = [
        repr(loaded),
        str(loaded),
        repr(loaded.model_dump()),
        str(loaded.model_dump()),
        loaded.model_dump_json(),
        json.dumps(loaded.model_dump(mode="json")),
        f"{loaded}",
        repr(getattr(loaded, field)),
    ]
    assert_no_secret(shown, *forms(password))
    assert json.loads(loaded.model_dump_json())[field] == masked
    assert getattr(loaded, field).get_secret_value() == url


def test_queue_url_keeps_its_seed_alias_and_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:Planted-Alias-3a4b@cache.internal:6379/0")
    monkeypatch.delenv("QUEUE_URL", raising=False)
    loaded = Settings(_env_file=None)
    assert loaded.queue_scheme == "redis"
    assert loaded.queue_url.masked() == "redis://:***@cache.internal:6379/0"
    assert settings(database_url="sqlite+aiosqlite:///x.db").is_sqlite
    assert not settings(database_url="postgresql+asyncpg://u:Planted-1@h/db").is_sqlite


def test_secrets_of_finds_every_secret_field_by_type() -> None:
    loaded = settings(
        database_url="postgresql+asyncpg://u:Planted-Db%40pw-5a@db.internal/tocsin",
        queue_url="amqp://guest:Planted-Mq-6b7c@mq.internal/",
    )
    robot = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=Planted-Robot-1f2e"
    channels = pinned(email={"password": "Planted-Smtp-8d9e"}, wecom={"webhook_url": robot})
    found = set(secrets_of(loaded, channels))
    # Found from each channel's declared settings class, not from a list kept by hand.
    assert found == set(secret_values(loaded)) | {
        value for settings in channels.settings.values() for value in secret_values(settings)
    }
    assert {
        "Planted-Db%40pw-5a",
        "Planted-Db@pw-5a",
        "Planted-Mq-6b7c",
        "Planted-Smtp-8d9e",
        robot,
    } <= found
    # A URL setting gives its password only: its host and database must stay readable.
    assert not any("db.internal" in s or "mq.internal" in s for s in found)


def test_secret_values_looks_into_secret_str_urls_and_nested_models() -> None:
    from pydantic import BaseModel

    class Channel(BaseModel):
        webhook: SecretStr
        token: SecretStr = SecretStr("")

    class Outer(BaseModel):
        channels: list[Channel]
        broker: SecretUrl

    outer = Outer(
        channels=[Channel(webhook=SecretStr("https://robot.test/send?key=Planted-Key-0f1a"))],
        broker=SecretUrl("redis://:Planted-Nested-2b3c@h/0"),
    )
    assert set(secret_values(outer)) == {
        "https://robot.test/send?key=Planted-Key-0f1a",
        "Planted-Key-0f1a",
        "Planted-Nested-2b3c",
    }


# --- Redactor ------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "masked", "password"), URLS)
def test_redactor_masks_an_unknown_url_password_whole(url: str, masked: str, password: str) -> None:
    text = f'connect failed for \'{url}\' after 3 tries\n{{"url": "{url}"}}'
    redacted = Redactor()(text)
    assert_no_secret(redacted, *forms(password))
    assert redacted.count(masked) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("at postgresql://u:p@ss@db/x now", "at postgresql://u:***@db/x now"),
        ("redis://:a@b@c@h:6379/0", "redis://:***@h:6379/0"),
        ("send?key=Planted-Key-1&x=1", "send?key=***&x=1"),
        ("cb?access_token=Planted-Tok&secret=Planted-Sec", "cb?access_token=***&secret=***"),
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"),
        ("redis://127.0.0.1:6379/0 and memory://", "redis://127.0.0.1:6379/0 and memory://"),
    ],
)
def test_redactor_masks_url_credentials_it_was_not_told(text: str, expected: str) -> None:
    assert Redactor()(text) == expected


def test_redactor_masks_known_secrets_longest_first() -> None:
    redact = Redactor(["Planted-Short", "Planted-Short-And-Long", "abc"])
    assert redact("x Planted-Short-And-Long y Planted-Short z abc") == "x *** y *** z abc"
    assert redact("regex chars (a+b)*") == "regex chars (a+b)*"
    assert Redactor(["Planted.(x)+"])("v=Planted.(x)+!") == "v=***!"


# --- logs ----------------------------------------------------------------------------------


def test_scrubber_redacts_nested_values_and_objects() -> None:
    scrub = scrubber(Redactor(["Planted-Nest-4d5e"]))
    event = {
        "a": ["Planted-Nest-4d5e", ("x", {"k": "Planted-Nest-4d5e"})],
        "b": ValueError("failed with Planted-Nest-4d5e"),
        "n": 3,
        "none": None,
    }
    scrubbed = scrub(event)
    assert_no_secret(repr(scrubbed), "Planted-Nest-4d5e")
    assert scrubbed == {
        "a": ["***", ["x", {"k": "***"}]],
        "b": "failed with ***",
        "n": 3,
        "none": None,
    }


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Puts structlog's configuration and the root logger back after the test."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    pinned = logging.getLogger("sqlalchemy").level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("sqlalchemy").setLevel(pinned)


SECRET = "Planted-Log-6f7a"


def _log_everything() -> None:
    logging.getLogger("httpx").debug("POST https://robot.test/send?key=%s", SECRET)
    logging.getLogger("aiormq.connection").warning("Connecting to: amqp://u:%s@mq/", SECRET)
    try:
        raise ConnectionError(f"postgresql+asyncpg://u:{SECRET}@db/x refused")
    except ConnectionError:
        logging.getLogger("sqlalchemy.pool").exception("reconnect failed")
        structlog.get_logger("tocsin.test").exception("gave up", urls=[SECRET])


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_log_line_is_scrubbed_at_debug(
    restored_logging: None, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    configure_logging("DEBUG", fmt, Redactor([SECRET]))
    configure_logging("DEBUG", fmt, Redactor([SECRET]))  # idempotent: still one handler
    _log_everything()
    err = capsys.readouterr().err
    assert_no_secret(err, SECRET)
    assert "POST https://robot.test/send?key=***" in err
    assert "reconnect failed" in err
    assert err.count("ConnectionError: postgresql+asyncpg://u:***@db/x refused") == 2
    if fmt == "json":
        lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert [line.get("logger") for line in lines][:3] == [
            "httpx",
            "aiormq.connection",
            "sqlalchemy.pool",
        ]
        assert len(lines) == 4


def test_library_lines_stay_at_warning_unless_debug(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json", Redactor([SECRET]))
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("sqlalchemy").level == logging.WARNING
    logging.getLogger("httpx").info("HTTP Request: POST https://robot.test")
    assert capsys.readouterr().err == ""
    configure_logging("DEBUG", "json")
    assert logging.getLogger("sqlalchemy").getEffectiveLevel() == logging.DEBUG


@pytest.mark.parametrize("value", ["debug", "Warning", "ERROR", "critical", " info "])
def test_log_level_is_any_standard_level_in_any_case(value: str) -> None:
    assert settings(log_level=value).log_level == value.strip().upper()


def test_a_bad_log_level_is_a_configuration_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        settings(log_level="verbose")
    [error] = raised.value.errors()
    assert error["loc"] == ("log_level",)
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in error["msg"]


def test_mask_password_is_what_masked_uses() -> None:
    url = "amqp://guest:Planted-Fn-8b9c@mq.internal/"
    assert mask_password(url) == SecretUrl(url).masked() == "amqp://guest:***@mq.internal/"
