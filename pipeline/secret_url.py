"""A URL setting whose password never shows: masked in repr, str, model_dump and JSON."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import quote, unquote, unquote_plus

from pydantic import BaseModel, GetCoreSchemaHandler, SecretStr
from pydantic_core import SchemaSerializer, core_schema

from pipeline.redact import MASK

# Query parameters that carry a credential (redis-py reads `?password=`, webhooks a `key`).
SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "key", "access_token", "token", "secret"})


def password_span(url: str) -> tuple[int, int] | None:
    """Returns where url's password starts and ends, or None when it has none.

    The userinfo is everything between `://` and the LAST `@`, so a raw `@`, `:` or `/` in a
    password stays inside it; the user name ends at the first `:` (user names cannot hold one).
    An `@` in a path or query makes this mask too much, never too little.
    """
    scheme_end = url.find("://")
    if scheme_end < 0:
        return None
    start = scheme_end + 3
    at = url.rfind("@", start)
    user, colon, _ = url[start:at].partition(":")
    if at < 0 or not colon or any(c in user for c in "/?#"):
        return None
    begin = start + len(user) + 1
    return (begin, at) if at > begin else None


def mask_password(url: str) -> str:
    """Returns url with its password and credential query parameters replaced by the mask."""
    span = password_span(url)
    head, tail = (url[: span[0]] + MASK, url[span[1] :]) if span else ("", url)
    base, question, query = tail.partition("?")
    if not question:
        return head + tail
    query, hash_, fragment = query.partition("#")
    pairs = [_masked_pair(pair) for pair in query.split("&")]
    return f"{head}{base}?{'&'.join(pairs)}{hash_}{fragment}"


def url_secrets(url: str) -> list[str]:
    """Returns the credentials inside url in every form they may be shown in.

    That is the password as written, percent-decoded and percent-encoded, and the values of
    credential query parameters; empty when the URL holds none.
    """
    found: list[str] = []
    span = password_span(url)
    if span is not None:
        written = url[span[0] : span[1]]
        decoded = unquote(written)
        found += [written, decoded, quote(decoded, safe=""), quote(decoded)]
    query = url[span[1] :] if span else url
    for pair in query.partition("?")[2].partition("#")[0].split("&"):
        name, _, value = pair.partition("=")
        if value and unquote_plus(name).lower() in SECRET_PARAMS:
            found += [value, unquote_plus(value)]
    return list(dict.fromkeys(v for v in found if v and v != MASK))


def _masked_pair(pair: str) -> str:
    name, equals, value = pair.partition("=")
    if value and unquote_plus(name).lower() in SECRET_PARAMS:
        return f"{name}{equals}{MASK}"
    return pair


def _serialize(value: SecretUrl, info: core_schema.SerializationInfo) -> str | SecretUrl:
    return value.masked() if info.mode == "json" else value


class SecretUrl(SecretStr):
    """A URL holding credentials; shows as `scheme://user:***@host/db`, get_secret_value() whole."""

    def masked(self) -> str:
        """Returns the URL with its password replaced by `***` (host and database stay visible)."""
        return mask_password(self.get_secret_value())

    def secrets(self) -> list[str]:
        """Returns the credential values inside the URL, in every form they may be shown in."""
        return url_secrets(self.get_secret_value())

    def _display(self) -> str:
        return self.masked()

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # SecretStr's own serializer writes "**********" in JSON; ours keeps the host visible.
        schema = dict(super().__get_pydantic_core_schema__(source, handler))
        schema["serialization"] = core_schema.plain_serializer_function_ser_schema(
            _serialize, info_arg=True, when_used="unless-none"
        )
        return cast(core_schema.CoreSchema, schema)

    __pydantic_serializer__ = SchemaSerializer(
        core_schema.any_schema(
            serialization=core_schema.plain_serializer_function_ser_schema(
                _serialize, info_arg=True, when_used="always"
            )
        )
    )


def secret_values(model: BaseModel) -> list[str]:
    """Returns the value of every secret-typed field of model (nested models too), for redaction.

    A SecretStr gives its whole value and, when it is a URL, the credentials inside it; a
    SecretUrl gives only its credentials, so its host and database stay readable.
    """
    found: list[str] = []
    for name in type(model).model_fields:
        found += _secrets_in(getattr(model, name))
    return list(dict.fromkeys(v for v in found if v))


def _secrets_in(value: object) -> list[str]:
    if isinstance(value, SecretUrl):
        return value.secrets()
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return [secret, *url_secrets(secret)]
    if isinstance(value, BaseModel):
        return secret_values(value)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return [s for item in value for s in _secrets_in(item)]
    return []
