"""Removes secrets from any text before it is logged, stored, printed or exported."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
# A webhook key travels in the query string; mask it even when we were never told its value.
_URL_KEY = re.compile(
    r"(?i)([?&;](?:key|access_token|token|secret|corpsecret|password|passwd|pwd)=)[^&#\s\"'<>]+"
)
# A URL password whose value we were never told: everything from `scheme://user:` to the last
# `@` before the URL ends (whitespace or a quote), so a raw `@`, `:` or `/` in it is covered.
_URL_PASSWORD = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/?#\s\"'<>]*:)[^\s\"'<>]+(@)")


class Redactor:
    """Masks known secret values and URL credentials in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        # One alternation, longest first, so a secret that contains another is masked whole;
        # it runs on every log line, so it is compiled once, not looped over.
        self._known = re.compile("|".join(map(re.escape, known))) if known else None

    def __call__(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(MASK, text)
        if "://" in text:
            text = _URL_PASSWORD.sub(rf"\1{MASK}\2", text)
        if "=" in text:
            text = _URL_KEY.sub(rf"\1{MASK}", text)
        return text


def mask_url(url: str) -> str:
    """Returns url with its key and password masked."""
    return Redactor()(url)
