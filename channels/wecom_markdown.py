"""WeCom markdown content: alert data escaped as text, validated mentions, byte limits."""

from __future__ import annotations

import re

import structlog

from channels.base import Delivery
from pipeline.models import Severity
from pipeline.validation import InputError, drop_refused_characters, validate_wecom_userid

log = structlog.get_logger("tocsin.wecom")

MARKDOWN_MAX_BYTES = 4096
TEXT_MAX_BYTES = 2048
TITLE_MAX_BYTES = 256
SEVERITY_MAX_BYTES = 64
TRUNCATION_MARK = "…"

_SEVERITY_COLOURS = {
    "critical": "warning",
    "fatal": "warning",
    "error": "warning",
    "high": "warning",
    "warning": "comment",
    "warn": "comment",
    "medium": "comment",
}


def truncate_utf8(text: str, max_bytes: int, mark: str = TRUNCATION_MARK) -> str:
    """Returns text cut to at most max_bytes of UTF-8 between characters, ending in mark if cut."""
    if max_bytes < 0:
        raise ValueError("max_bytes must be >= 0")
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    mark_size = len(mark.encode("utf-8"))
    if mark_size > max_bytes:
        mark, mark_size = "", 0
    # Decoding a byte prefix with "ignore" drops only the split character at its end.
    return data[: max_bytes - mark_size].decode("utf-8", errors="ignore") + mark


def severity_colour(severity: str) -> str:
    """Returns the WeCom markdown font colour for a severity: warning, comment or info."""
    return _SEVERITY_COLOURS.get(severity.strip().lower(), "info")


def render_markdown(delivery: Delivery, max_bytes: int = MARKDOWN_MAX_BYTES) -> str:
    """Returns the markdown content for a delivery: alert data escaped, the body cut to fit.

    Only this template makes markup: the heading, the severity's font tag and the mention line.
    """
    title = fit(escape_markdown(_plain_line(delivery.title), heading=True), TITLE_MAX_BYTES)
    severity = fit(
        escape_markdown(_plain_line(delivery.severity.upper()), heading=True), SEVERITY_MAX_BYTES
    )
    head = (
        f"## {title}\n"
        f'> Severity: <font color="{severity_colour(delivery.severity)}">{severity}</font>\n\n'
    )
    tail = mention_line(delivery)
    budget = max_bytes - _size(head) - _size(tail)
    # Escaped first, then cut between escapes: the limit counts what is sent.
    body = fit(escape_markdown(_plain_text(delivery.body)), max(budget, 0))
    # Head and tail are bounded, so only a max_bytes far below WeCom's can still overflow.
    return truncate_utf8(head + body + tail, max_bytes)


# Alert data is text, never markup. WeCom markdown reads HTML-like tags (<font>, the <@userid>
# mention) and CommonMark-like syntax (headings, quotes, bold, links, inline code), so:
# - `&`, `<` and `>` become &amp; &lt; &gt;, so no tag, mention (<@all>) or autolink
#   (<http://x>) can open and `>` quotes nothing; `&` too, so text that already reads like an
#   entity (&lt;@all&gt;) shows as typed instead of being decoded into a tag.
# - \ ` * _ ~ | [ ] ( ) take a backslash wherever they are: no emphasis, code span, table or
#   link. With the parentheses escaped too, no "](" survives even for a renderer that ignores
#   backslashes ("!" is left alone: it makes an image only before "[").
# - # + - = and the dot of "1." take a backslash where they begin a line (heading, list,
#   setext underline), and `#` everywhere in the heading line (a trailing "#" would close it).
# Both fail safe: a renderer that decoded neither would show the escapes, never markup.
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_INLINE_MARKUP = frozenset("\\`*_~|[]()")
_LINE_MARKUP = re.compile(r"^[ \t]*(?:[#+=-]|\d+\.)", re.MULTILINE)


def escape_markdown(text: str, *, heading: bool = False) -> list[str]:
    """Returns text as markdown that shows it literally: one piece per character, escaped.

    Kept as pieces so that truncation (fit) never splits an escape such as &lt; or \\[.
    """
    if heading:
        return [_escape_char(char, char == "#") for char in text]
    line_marks = {match.end() - 1 for match in _LINE_MARKUP.finditer(text)}
    return [_escape_char(char, index in line_marks) for index, char in enumerate(text)]


def _escape_char(char: str, starts_markup: bool) -> str:
    if char in _ENTITIES:
        return _ENTITIES[char]
    return "\\" + char if starts_markup or char in _INLINE_MARKUP else char


def fit(pieces: list[str], max_bytes: int, mark: str = TRUNCATION_MARK) -> str:
    """Joins pieces, cut between pieces to at most max_bytes of UTF-8 and ending in mark if cut."""
    text = "".join(pieces)
    if _size(text) <= max_bytes:
        return text
    if _size(mark) > max_bytes:
        mark = ""
    room = max_bytes - _size(mark)
    kept: list[str] = []
    for piece in pieces:
        room -= _size(piece)
        if room < 0:
            break
        kept.append(piece)
    return "".join(kept) + mark


def mention_line(delivery: Delivery) -> str:
    """Returns the closing mention line: <@all> on a critical alert that asked, <@userid>."""
    mentions = []
    if delivery.mention_all and delivery.severity.strip().lower() == Severity.CRITICAL:
        mentions.append("<@all>")
    userid = _mentionable(delivery)
    if userid is not None:
        mentions.append(f"<@{userid}>")
    return "\n\n" + " ".join(mentions) if mentions else ""


def _mentionable(delivery: Delivery) -> str | None:
    """Returns the recipient's userid if it is valid, checked again: the row may predate checks."""
    userid = delivery.contacts.get("wecom_userid")
    if not userid:
        return None
    try:
        return validate_wecom_userid(userid)
    except InputError:
        # The group still sees the alert, without the mention; the value itself is not logged.
        log.warning(
            "wecom_mention_dropped",
            notification_id=delivery.notification_id,
            recipient_id=delivery.recipient_id,
            why="stored wecom_userid is not a valid WeCom userid",
        )
        return None


def _plain_line(text: str) -> str:
    """Returns text on one line, without control characters or lone surrogates."""
    return _clean(drop_refused_characters(" ".join(text.splitlines()), multiline=False))


def _plain_text(text: str) -> str:
    """Returns text with every line break made LF, without other control characters."""
    return _clean(drop_refused_characters("\n".join(text.splitlines()), multiline=True))


def _clean(text: str) -> str:
    # Lone surrogates cannot be sent as UTF-8 (WeCom answers 40033); replace them.
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _size(text: str) -> int:
    return len(text.encode("utf-8"))
