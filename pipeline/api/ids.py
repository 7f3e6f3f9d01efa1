"""Row ids as the API takes them: in paths, and in the cursors and event ids it hands out."""

from __future__ import annotations

from fastapi import HTTPException

from pipeline.models import ID_MAX

__all__ = ["ID_MAX", "parse_id"]


def parse_id(text: str | None, what: str = "cursor") -> int | None:
    """Parses an id this API handed out (None when absent); 422 naming `what` for anything else.

    Only ASCII digits: str.isdigit() also accepts '²', which int() then refuses.
    """
    if text is None or not text.strip():
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > ID_MAX + 1:
        raise HTTPException(422, f"{what} {text[:40]!r} is not one this API returned")
    return int(text)
