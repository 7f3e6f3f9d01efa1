"""Removes secrets from any text before it is logged, stored, printed or exported."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
# A webhook key travels in the query string; mask it even when we were never told its value.
_URL_KEY = re.compile(r"(?i)([?&](?:key|access_token|token|secret)=)[^&\s\"'<>]+")
_URL_PASSWORD = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@/\s]+(@)")


class Redactor:
    """Masks known secret values and URL credentials in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        text = _URL_KEY.sub(rf"\1{MASK}", text)
        return _URL_PASSWORD.sub(rf"\1{MASK}\2", text)


def mask_url(url: str) -> str:
    """Returns url with its key and password masked."""
    return Redactor()(url)
