"""WeCom markdown: alert data is escaped into text, never markup, mention or link, and fits."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from channels.wecom_markdown import (
    MARKDOWN_MAX_BYTES,
    TITLE_MAX_BYTES,
    TRUNCATION_MARK,
    escape_markdown,
    fit,
    mention_line,
    render_markdown,
)
from pipeline.validation import InputError, validate_wecom_userid
from tests.channels.conftest import Harness
from tests.channels.test_wecom import content_of, make_delivery
from tests.support.wecom_server import WeComRobot, mentions

# Our template; the named parts are the only places alert data goes.
USERID = r"[A-Za-z0-9_.@-]{1,64}"
LAYOUT = re.compile(
    r"## (?P<title>[^\n]*)\n"
    r'> Severity: <font color="(?:warning|comment|info)">(?P<severity>[^\n]*)</font>\n\n'
    r"(?P<body>.*?)"
    r"(?P<pointer>\n\n\(Cut short: the full text is alert \d+ in Tocsin\.\))?"
    rf"(?P<tail>\n\n<@all>(?: <@{USERID}>)?|\n\n<@{USERID}>)?\Z",
    re.DOTALL,
)
POINTER = "(Cut short: the full text is alert 7 in Tocsin.)"
# What escaped alert data may consist of: escapes, entities, and characters that mark nothing.
ESCAPED_ONLY = re.compile(
    r"(?:\\[\\`*_~|\[\]()#+=.-]|&(?:amp|lt|gt);|[^\\&<>\[\]()`*_~|])*", re.DOTALL
)
# Markup that begins a line: heading, list or setext underline (">" can never appear raw).
LINE_MARKUP = re.compile(r"^[ \t]*(?:[#+=-]|\d+\.)", re.MULTILINE)
UNESCAPE = re.compile(r"\\(.)|&(amp|lt|gt);", re.DOTALL)
ENTITY_TEXT = {"amp": "&", "lt": "<", "gt": ">"}

INJECTIONS = [
    "<@all>",
    "<@ALL>",
    "<@zhangsan>",
    "hi <@all> there",
    "[login](http://evil.example)",
    "![img](http://evil.example/x.png)",
    '<font color="warning">fake CRITICAL</font>',
    "<font color=info>",
    "# heading",
    "## heading",
    "> quote",
    "**bold**",
    "__bold__",
    "*em* _em_",
    "~~strike~~",
    "`code`",
    "```\nfence\n```",
    "<http://x>",
    "<https://evil.example/login>",
    "&lt;@all&gt;",
    "&#60;@all&#62;",
    "\\<@all>",
    "\\[login\\](http://evil.example)",
    "<<@all>>",
    "| a | b |\n|---|---|",
    "- item\n+ item\n1. first\n2) second",
    "title\n===",
    "line one\n# two\n  > three\n\t- four",
    "<a href='http://evil.example'>x</a>",
]


def unescape(text: str) -> str:
    return UNESCAPE.sub(lambda m: m[1] if m[1] is not None else ENTITY_TEXT[m[2]], text)


def parts(content: str) -> dict[str, str]:
    match = LAYOUT.fullmatch(content)
    assert match is not None, content
    return {name: value or "" for name, value in match.groupdict().items()}


def assert_only_text(text: str, *, starts_lines: bool = True) -> None:
    """Fails unless text, from alert data, can open no tag, mention, link or block."""
    assert ESCAPED_ONLY.fullmatch(text), text
    assert not starts_lines or LINE_MARKUP.search(text) is None, text
    for markup in ("<@", "<font", "<http", "](", "**", "``"):
        assert markup not in text


def body_of(text: str) -> str:
    return parts(render_markdown(make_delivery(body=text, wecom_userid=None)))["body"]


# the injection table


@pytest.mark.parametrize("text", INJECTIONS)
def test_injected_body_renders_literally(text: str) -> None:
    content = render_markdown(make_delivery(body=text))
    found = parts(content)
    assert_only_text(found["body"])
    assert unescape(found["body"]) == text
    assert mentions(content) == ["zhangsan"]
    assert content.count("<font") == 1


@pytest.mark.parametrize("text", [t for t in INJECTIONS if "\n" not in t])
def test_injected_title_renders_literally_in_its_heading(text: str) -> None:
    content = render_markdown(make_delivery(title=text, wecom_userid=None))
    found = parts(content)
    assert_only_text(found["title"], starts_lines=False)
    assert "#" not in found["title"].replace("\\#", "")
    assert unescape(found["title"]) == text
    assert mentions(content) == []


@pytest.mark.parametrize("severity", ["<@all>", "critical</font><@all>", "[x](http://e)", "# x"])
def test_injected_severity_renders_literally(severity: str) -> None:
    content = render_markdown(make_delivery(severity=severity, wecom_userid=None))
    found = parts(content)
    assert_only_text(found["severity"], starts_lines=False)
    assert unescape(found["severity"]) == severity.upper()
    assert mentions(content) == []


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("a < b & c > d", "a &lt; b &amp; c &gt; d"),
        ("[x](y)", "\\[x\\]\\(y\\)"),
        ("a\\b", "a\\\\b"),
        ("# h\n - i\n12. j\nk - l #m 3.5", "\\# h\n \\- i\n12\\. j\nk - l #m 3.5"),
        ("db-1 is 95% full!", "db-1 is 95% full!"),
        ("磁盘 *已满*", "磁盘 \\*已满\\*"),
    ],
)
def test_escaping_examples(text: str, escaped: str) -> None:
    assert "".join(escape_markdown(text)) == escaped


def test_heading_escapes_every_hash() -> None:
    assert "".join(escape_markdown("Issue #42 ##", heading=True)) == "Issue \\#42 \\#\\#"


# mentions: validated userids only, and everyone only when a critical alert asks


@pytest.mark.parametrize(
    "userid",
    ["all", "@all", "ALL", "@All", "bob> <@all", "bob>", "<@all>", "a b", "bob\n<@all>", "x" * 65],
)
def test_an_invalid_stored_userid_mentions_nobody_and_the_message_still_goes(
    userid: str,
) -> None:
    with capture_logs() as logs:
        content = render_markdown(make_delivery(wecom_userid=userid))
    assert mentions(content) == []
    assert parts(content)["body"] == "Usage is 97% and rising"
    assert [(e["event"], e["log_level"], e["notification_id"]) for e in logs] == [
        ("wecom_mention_dropped", "warning", 42)
    ]
    assert all(userid not in str(value) for e in logs for value in e.values())


@pytest.mark.parametrize("userid", ["zhangsan", "a.b_c@d-e", " bob ", "x" * 64])
def test_a_valid_userid_is_mentioned_last(userid: str) -> None:
    content = render_markdown(make_delivery(wecom_userid=userid))
    assert content.endswith(f"\n\n<@{userid.strip()}>")
    assert mentions(content) == [userid.strip()]


@pytest.mark.parametrize(
    ("mention_all", "severity", "expected"),
    [
        (True, "critical", ["all", "zhangsan"]),
        (True, "CRITICAL", ["all", "zhangsan"]),
        (True, "warning", ["zhangsan"]),
        (True, "info", ["zhangsan"]),
        (True, "critical<@all>", ["zhangsan"]),
        (False, "critical", ["zhangsan"]),
    ],
)
def test_everyone_is_mentioned_only_on_a_critical_alert_that_asks(
    mention_all: bool, severity: str, expected: list[str]
) -> None:
    content = render_markdown(make_delivery(mention_all=mention_all, severity=severity))
    assert mentions(content) == expected


def test_mention_all_without_a_userid() -> None:
    assert mention_line(make_delivery(mention_all=True, wecom_userid=None)) == "\n\n<@all>"


# control characters and encoding: whatever a row holds, the content is clean UTF-8


def test_control_characters_are_dropped_and_line_breaks_become_lf() -> None:
    body = "a\x00b\x07c\r\nd\re\x0bf\u2028g\x1b[31mh\tı"
    assert body_of(body) == "abc\nd\ne\nf\ng[31mh\tı".replace("[", "\\[")


def test_title_control_characters_and_line_breaks_stay_off_the_heading() -> None:
    content = render_markdown(make_delivery(title="one\ntwo\x00\r\n## three\x1b"))
    assert content.splitlines()[0] == "## one two \\#\\# three"


def test_lone_surrogates_are_replaced() -> None:
    content = render_markdown(make_delivery(title="bad \udcff", body="x \ud800 y"))
    content.encode("utf-8")
    assert "bad ?" in content and "x ? y" in content


# truncation: after escaping, and never through an escape


@pytest.mark.parametrize("pad", range(6))
@pytest.mark.parametrize(("char", "escaped"), [("<", "&lt;"), ("&", "&amp;"), ("[", "\\[")])
def test_truncation_never_splits_an_escape(pad: int, char: str, escaped: str) -> None:
    content = render_markdown(make_delivery(body="x" * pad + char * 3000))
    assert len(content.encode("utf-8")) <= MARKDOWN_MAX_BYTES
    body = parts(content)["body"]
    assert body.endswith(TRUNCATION_MARK)
    kept = body.removesuffix(TRUNCATION_MARK)
    assert re.fullmatch(rf"x{{{pad}}}(?:{re.escape(escaped)})+", kept), kept[-20:]
    # Cut as late as the escapes allow: one more would not fit.
    assert len(content.encode("utf-8")) + len(escaped) > MARKDOWN_MAX_BYTES


def test_the_limit_counts_escaped_bytes() -> None:
    # 1400 "<" fit raw (1400 B) but not escaped (5600 B).
    content = render_markdown(make_delivery(body="<" * 1400))
    assert len(content.encode("utf-8")) <= MARKDOWN_MAX_BYTES
    assert content.endswith(f"{TRUNCATION_MARK}\n\n{POINTER}\n\n<@zhangsan>")


def test_a_long_escaped_title_is_cut_between_escapes() -> None:
    title = parts(render_markdown(make_delivery(title="<" * 200)))["title"]
    assert len(title.encode("utf-8")) <= TITLE_MAX_BYTES
    assert re.fullmatch(rf"(?:&lt;)+{TRUNCATION_MARK}", title)


@settings(database=None, max_examples=300)
@given(
    text=st.text(alphabet=st.sampled_from("a中🚨<>&[]\\#\n*"), max_size=80),
    max_bytes=st.integers(min_value=0, max_value=200),
)
def test_fit_keeps_the_longest_prefix_of_whole_pieces(text: str, max_bytes: int) -> None:
    pieces = escape_markdown(text)
    result = fit(pieces, max_bytes)
    assert len(result.encode("utf-8")) <= max_bytes
    whole = "".join(pieces)
    if len(whole.encode("utf-8")) <= max_bytes:
        assert result == whole
        return
    mark = TRUNCATION_MARK if max_bytes >= len(TRUNCATION_MARK.encode("utf-8")) else ""
    assert result.endswith(mark)
    kept = result.removesuffix(mark) if mark else result
    prefixes = ["".join(pieces[:n]) for n in range(len(pieces) + 1)]
    assert kept in prefixes
    longer = prefixes[prefixes.index(kept) + 1]
    assert len((longer + mark).encode("utf-8")) > max_bytes


# properties over arbitrary alert data

MARKUP_CHARS = "<>&@[]()!*_`~|#+-=.\\ \n1aé中🚨…"
MARKUP = [*MARKUP_CHARS, "\t", "<@all>", "](", "&lt;", "<font", "\r\n"]
markup_text = st.lists(st.sampled_from(MARKUP), max_size=80).map("".join)
any_text = st.one_of(st.text(max_size=300), markup_text, markup_text.map(lambda t: t * 60))
# Text with no character render drops or rewrites (control, surrogate, unassigned, line
# separators) except LF: its escaped form must unescape to exactly what was given.
plain_char = st.characters(blacklist_categories=("Cc", "Cs", "Cn", "Zl", "Zp"))
plain_text = st.text(st.one_of(plain_char, st.sampled_from(MARKUP_CHARS)), max_size=300)


@settings(database=None, max_examples=400, deadline=None)
@given(
    title=any_text,
    body=any_text,
    severity=st.one_of(st.sampled_from(["critical", "warning", "info"]), st.text(max_size=20)),
    userid=st.one_of(st.none(), st.from_regex(USERID, fullmatch=True), st.text(max_size=70)),
    mention_all=st.booleans(),
)
@example(
    title="<@all>", body="[x](http://e)" * 400, severity="critical", userid="all", mention_all=True
)
def test_alert_data_never_becomes_markup(
    title: str, body: str, severity: str, userid: str | None, mention_all: bool
) -> None:
    delivery = make_delivery(
        title=title, body=body, severity=severity, wecom_userid=userid, mention_all=mention_all
    )
    with capture_logs():
        content = render_markdown(delivery)
    assert len(content.encode("utf-8")) <= MARKDOWN_MAX_BYTES
    found = parts(content)
    assert_only_text(found["title"], starts_lines=False)
    assert_only_text(found["severity"], starts_lines=False)
    assert_only_text(found["body"])
    assert content.count("<font") == 1
    assert mentions(content) == expected_mentions(severity, userid, mention_all)


def expected_mentions(severity: str, userid: str | None, mention_all: bool) -> list[str]:
    expected = ["all"] if mention_all and severity.strip().lower() == "critical" else []
    try:
        return [*expected, validate_wecom_userid(userid or "")]
    except InputError:
        return expected


@settings(database=None, max_examples=300, deadline=None)
@given(title=plain_text, body=plain_text)
def test_unescaping_gives_back_the_alert_data(title: str, body: str) -> None:
    found = parts(render_markdown(make_delivery(title=title, body=body, wecom_userid=None)))
    assert_round_trip(found["title"], " ".join(title.splitlines()))
    assert_round_trip(found["body"], "\n".join(body.splitlines()))


def assert_round_trip(rendered: str, given: str) -> None:
    if unescape(rendered) == given:
        return
    # Cut to fit: what is left is a proper prefix, and says so.
    assert rendered.endswith(TRUNCATION_MARK)
    kept = unescape(rendered.removesuffix(TRUNCATION_MARK))
    assert given.startswith(kept) and len(kept) < len(given)


# end to end: what the group receives


async def test_the_group_receives_text_and_only_our_mention(
    wecom_server: WeComRobot, harness: Harness
) -> None:
    # One part per post: the body is cut, and the cut never opens markup.
    channel = harness.channel(wecom_webhook_url=wecom_server.webhook_url("k1"), wecom_max_parts=1)
    delivery: dict[str, Any] = {
        "title": "<@all> [login](http://evil.example)",
        "body": "\n".join(INJECTIONS) * 20,
        "wecom_userid": "zhangsan",
    }
    await channel.send(channel.render(make_delivery(**delivery)))
    [received] = wecom_server.received["k1"]
    content = content_of(received)
    assert len(content.encode("utf-8")) <= MARKDOWN_MAX_BYTES
    assert mentions(content) == ["zhangsan"]
    found = parts(content)
    assert_only_text(found["title"], starts_lines=False)
    assert_only_text(found["body"])
    assert unescape(found["title"]) == delivery["title"]
