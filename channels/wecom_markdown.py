"""WeCom markdown content: alert data escaped as text, validated mentions, byte limits."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Post:
    """One robot post: the deliveries it mentions and its contents, one per numbered part."""

    deliveries: tuple[Delivery, ...]
    parts: tuple[str, ...]


def compose(
    deliveries: Sequence[Delivery],
    *,
    max_parts: int = 1,
    full_text: str = "",
    max_bytes: int = MARKDOWN_MAX_BYTES,
    mention: bool = True,
) -> list[Post]:
    """Returns the posts for deliveries of one alert to one robot: one post mentioning them all.

    Content over max_bytes is split between lines (or characters, never inside one) into
    numbered parts; past max_parts the body is cut to one part ending with a pointer to the
    full text (`full_text`, else the alert's number), and the mentions fill the other parts,
    post after post, so nobody goes unmentioned (mention=False: a message addressed to each
    recipient, such as an app message, mentions nobody). Alert data is escaped: only this template
    makes markup (the heading, the severity's font tag, the mentions and the pointer's link).
    """
    first = deliveries[0]
    head = _head(first)
    body = escape_markdown(_plain_text(first.body))
    mentions, unmentioned = _mentions(deliveries) if mention else ([], list(deliveries))
    whole = [head, *body, *(atom for atom, _ in mentions)]
    if _size("".join(whole)) <= max_bytes:
        return [Post(tuple(deliveries), ("".join(whole),))]
    # Parts are numbered; a post of one part is not.
    room = max_bytes - (_NUMBER_ROOM if max_parts > 1 else 0)
    ranges = pack(whole, room)
    if len(ranges) <= max_parts:
        return [Post(tuple(deliveries), _numbered(whole, ranges))]
    # A single part per post keeps room for its mentions (up to half of it).
    mention_room = 0 if max_parts > 1 else min(_size("".join(whole[-len(mentions) :])), room // 2)
    cut = _cut_body(head, body, first, full_text, room - mention_room)
    return _posts(cut, mentions, unmentioned, room, max_parts)


def render_markdown(delivery: Delivery, max_bytes: int = MARKDOWN_MAX_BYTES) -> str:
    """Returns the one-part content for a single delivery (the body cut to fit)."""
    [post] = compose([delivery], max_bytes=max_bytes)
    [content] = post.parts
    return content


def pack(atoms: Sequence[str], room: int) -> list[tuple[int, int]]:
    """Splits atoms into parts of at most room bytes; returns each part's (start, end).

    A part ends after its last line break when that keeps it at least half full, else between
    two atoms; an atom (a character, an escape, a mention) is never split.
    """
    ranges: list[tuple[int, int]] = []
    start = index = used = 0
    line_end: int | None = None
    line_bytes = 0
    while index < len(atoms):
        size = _size(atoms[index])
        if used + size > room and index > start:
            end = line_end if line_end is not None and line_bytes * 2 >= room else index
            ranges.append((start, end))
            start = index = end
            used, line_end = 0, None
            continue
        used += size
        index += 1
        if atoms[index - 1].endswith("\n"):
            line_end, line_bytes = index, used
    if start < len(atoms):
        ranges.append((start, len(atoms)))
    return ranges


# "(12/15)\n" before each part of a split post.
_NUMBER_ROOM = len("(99/99)\n")


def _numbered(atoms: Sequence[str], ranges: Sequence[tuple[int, int]]) -> tuple[str, ...]:
    total = len(ranges)
    texts = ["".join(atoms[start:end]).strip("\n") for start, end in ranges]
    if total == 1:
        return (texts[0],)
    return tuple(f"({number}/{total})\n{text}" for number, text in enumerate(texts, 1))


def _head(delivery: Delivery) -> str:
    title = fit(escape_markdown(_plain_line(delivery.title), heading=True), TITLE_MAX_BYTES)
    severity = fit(
        escape_markdown(_plain_line(delivery.severity.upper()), heading=True), SEVERITY_MAX_BYTES
    )
    return (
        f"## {title}\n"
        f'> Severity: <font color="{severity_colour(delivery.severity)}">{severity}</font>\n\n'
    )


def _mentions(
    deliveries: Sequence[Delivery],
) -> tuple[list[tuple[str, Delivery | None]], list[Delivery]]:
    """Returns the mention atoms (each with whom it mentions) and who has no mention."""
    first = deliveries[0]
    mentions: list[tuple[str, Delivery | None]] = []
    if first.mention_all and first.severity.strip().lower() == Severity.CRITICAL:
        mentions.append(("<@all>", None))
    unmentioned: list[Delivery] = []
    seen: set[str] = set()
    for delivery in deliveries:
        userid = _mentionable(delivery)
        if userid is None or userid in seen:
            unmentioned.append(delivery)
            continue
        seen.add(userid)
        mentions.append((f"<@{userid}>", delivery))
    # The block starts on its own paragraph; each further mention after a space.
    return [
        (("\n\n" if index == 0 else " ") + atom, delivery)
        for index, (atom, delivery) in enumerate(mentions)
    ], unmentioned


def mention_line(delivery: Delivery) -> str:
    """Returns the closing mention line of a single delivery: <@all> if asked, then <@userid>."""
    mentions, _ = _mentions([delivery])
    return "".join(atom for atom, _ in mentions)


def _cut_body(head: str, body: list[str], delivery: Delivery, full_text: str, room: int) -> str:
    pointer = (
        f"\n\n[Full text]({full_text.format(alert_id=delivery.alert_id)})"
        if full_text
        else f"\n\n(Cut short: the full text is alert {delivery.alert_id} in Tocsin.)"
    )
    return head + fit(body, max(room - _size(head) - _size(pointer), 0)) + pointer


def _posts(
    cut: str,
    mentions: list[tuple[str, Delivery | None]],
    unmentioned: list[Delivery],
    room: int,
    max_parts: int,
) -> list[Post]:
    """Posts of the cut body and as many mentions as max_parts hold, until all are mentioned."""
    posts: list[Post] = []
    left = mentions
    while True:
        # Every post's mentions start on their own paragraph, after the pointer.
        atoms = [
            cut,
            *(atom if index else "\n\n" + atom.lstrip() for index, (atom, _) in enumerate(left)),
        ]
        ranges = pack(atoms, room)[:max_parts]
        taken = ranges[-1][1] - 1  # mention atoms in this post
        whom = [delivery for _, delivery in left[:taken] if delivery is not None]
        if not posts:
            whom = [*whom, *unmentioned]
        posts.append(Post(tuple(whom), _numbered(atoms, ranges)))
        left = [(atom, delivery) for atom, delivery in left[taken:]]
        if not left:
            return posts


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
