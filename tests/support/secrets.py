"""Asserts that no secret leaked into text shown to people, logged or stored."""

from __future__ import annotations

from collections.abc import Iterable


def assert_no_secret(texts: str | Iterable[str], *secrets: str) -> None:
    """Fails, without echoing the secret, if any text contains any of the secrets."""
    if not secrets or not all(secrets):
        raise ValueError("assert_no_secret needs non-empty secrets to look for")
    for text in [texts] if isinstance(texts, str) else list(texts):
        for number, secret in enumerate(secrets, 1):
            if secret in text:
                shown = text.replace(secret, "<SECRET>")[:300]
                raise AssertionError(f"secret #{number} leaked into: {shown!r}")
