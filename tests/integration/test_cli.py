"""End to end through the real `tocsin` console script: SQLite, in-process queue, fake servers."""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.integration.cli import (
    EMAIL_FROM,
    MESSAGE_ID_DOMAIN,
    Cli,
    Result,
    Server,
    base_env,
    channel_env,
)
from tests.support.secrets import assert_no_secret
from tests.support.services import run_in_thread
from tests.support.smtp_server import SmtpSink
from tests.support.waiting import eventually
from tests.support.wecom_server import WeComRobot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ALICE_ZONE = "Asia/Shanghai"
WARNING_TITLE = "Disk 95% on db-1"
WARNING_BODY = "Usage of /var on db-1 is 95% and rising <fast> & steady."
CRITICAL_TITLE = "Primary database db-1 is down"


# --- helpers ---------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Splits a command line without quoting (for arguments that hold no spaces)."""
    return text.split()


def quiet_window_around_now(zone: str) -> tuple[str, datetime]:
    """Returns a quiet window containing now in zone (an hour back, two ahead) and its UTC end."""
    now = datetime.now(UTC)
    tz = ZoneInfo(zone)
    start = (now - timedelta(hours=1)).astimezone(tz)
    end = (now + timedelta(hours=2)).astimezone(tz).replace(second=0, microsecond=0)
    window = f"{start:%H:%M}-{end:%H:%M}"
    assert f"{start:%H:%M}" != f"{end:%H:%M}", window
    return window, end.astimezone(UTC)


def by_identity(rows: list[dict[str, Any]]) -> dict[tuple[int, str, str], dict[str, Any]]:
    """Indexes notification rows by (alert id, recipient, channel)."""
    index = {(r["alert_id"], r["recipient"], r["channel"]): r for r in rows}
    assert len(index) == len(rows), "two rows share one (alert, recipient, channel) identity"
    return index


def mail_to(sink: SmtpSink, address: str) -> list[EmailMessage]:
    """The messages the sink accepted for address."""
    return [m for m in sink.messages if m["To"] == address]


def is_message_id_of(message_id: str, notification_id: int) -> bool:
    """Whether message_id is the one this installation gives the notification (any resend)."""
    shape = rf"<tocsin\.{notification_id}\.[0-9a-f]{{32}}@{re.escape(MESSAGE_ID_DOMAIN)}>"
    return re.fullmatch(shape, message_id) is not None


def parts(message: EmailMessage) -> tuple[str, str]:
    """The text and HTML bodies of a multipart/alternative message."""
    assert message.is_multipart(), message.get_content_type()
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def posts(robot: WeComRobot, key: str = "k1") -> list[str]:
    """The markdown contents the robot accepted for key."""
    bodies = robot.received.get(key, [])
    assert all(b["msgtype"] == "markdown" for b in bodies), bodies
    return [b["markdown"]["content"] for b in bodies]


def snapshot(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table in a SQLite file."""
    with closing(sqlite3.connect(db)) as connection:
        tables = [
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return {
            table: sorted(connection.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for table in tables
        }


def assert_one_line_error(result: Result, *needles: str) -> None:
    """Asserts failure with exactly one non-blank stderr line, no traceback, naming the problem."""
    assert result.code != 0, f"`tocsin {result.shown}` should have failed: {result}"
    assert "Traceback" not in result.stderr, str(result)
    assert len(result.error_lines) == 1, f"expected one error line: {result}"
    line = result.error_lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"


# --- the whole pipeline ------------------------------------------------------------------


async def test_end_to_end_quiet_hours_critical_opt_out_and_inbox(
    cli: Cli, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    """Alerts become mail, robot posts and inbox rows; quiet hours defer; reruns add nothing."""
    await cli.ok("db", "upgrade")
    window, release = quiet_window_around_now(ALICE_ZONE)
    alice = await cli.json(
        *words("users upsert alice --email alice@example.com --wecom-userid alice"),
        *("--timezone", ALICE_ZONE, "--quiet-hours", window, "--channels", "system,email,wecom"),
    )
    assert alice["quiet_hours"] == window
    assert alice["timezone"] == ALICE_ZONE
    assert alice["channels"] == ["email", "system", "wecom"]
    await cli.ok("users", "upsert", "bob", "--email", "bob@example.com")
    await cli.ok(
        *words("users upsert carol --email carol@example.com --wecom-userid carol"),
        *words("--channels system"),
    )
    users = await cli.json("users", "list")
    assert [u["username"] for u in users] == ["alice", "bob", "carol"]
    assert next(u for u in users if u["username"] == "carol")["channels"] == ["system"]

    warning = await cli.json(
        *("alerts", "create", "--title", WARNING_TITLE, "--body", WARNING_BODY),
        *words("--severity warning --recipient alice --recipient bob --recipient carol"),
    )
    critical = await cli.json(
        *("alerts", "create", "--title", CRITICAL_TITLE, "--body", "Connections refused."),
        *words("--severity critical --recipient alice --mention-all"),
    )
    assert warning["recipients"] == ["alice", "bob", "carol"]
    assert critical["severity"] == "critical"
    w, c = warning["id"], critical["id"]

    # Expanded as they were created: 3 recipients x 3 channels + 1 x 3; alice's warning
    # email/wecom wait; carol's are off. The drain's producer pass finds nothing left to do.
    made = await cli.json("notifications", "list")
    assert len(made) == 12
    assert sum(n["deferred"] for n in made) == 2
    assert sum(n["state"] == "SUPPRESSED" for n in made) == 2
    report = await cli.json("run", "--drain")
    assert report["produced"] == {
        "alerts": 0,
        "created": 0,
        "deferred": 0,
        "suppressed": 0,
        "duplicates": 0,
    }
    assert report["published"] == 8
    assert report["delivered"] == 8

    rows = by_identity(await cli.json("notifications", "list"))
    assert len(rows) == 12
    sent = [
        (w, "alice", "system"),
        (w, "bob", "system"),
        (w, "bob", "email"),
        (w, "bob", "wecom"),
        (w, "carol", "system"),
        (c, "alice", "system"),
        (c, "alice", "email"),
        (c, "alice", "wecom"),
    ]
    for identity in sent:
        row = rows[identity]
        assert (row["state"], row["attempts"], row["deferred"]) == ("SENT", 1, False), row
        assert row["sent_at"] is not None
    for channel in ("email", "wecom"):
        deferred = rows[(w, "alice", channel)]
        assert deferred["state"] == "PENDING", deferred
        assert deferred["deferred"] is True
        assert deferred["attempts"] == 0
        assert datetime.fromisoformat(deferred["not_before"]) == release, (deferred, window)
        suppressed = rows[(w, "carol", channel)]
        assert (suppressed["state"], suppressed["reason"]) == ("SUPPRESSED", "opted_out")

    # mail: bob's warning and alice's critical only
    assert len(smtp_server.messages) == 2
    (bob_mail,) = mail_to(smtp_server, "bob@example.com")
    (alice_mail,) = mail_to(smtp_server, "alice@example.com")
    assert bob_mail["Subject"] == f"[WARNING] {WARNING_TITLE}"
    assert alice_mail["Subject"] == f"[CRITICAL] {CRITICAL_TITLE}"
    assert bob_mail["From"] == EMAIL_FROM
    for mail, identity in ((bob_mail, (w, "bob", "email")), (alice_mail, (c, "alice", "email"))):
        assert is_message_id_of(mail["Message-ID"], rows[identity]["id"])
    text, html = parts(bob_mail)
    assert WARNING_BODY in text
    assert "&lt;fast&gt; &amp; steady" in html and "<fast>" not in html
    assert WARNING_TITLE in html
    assert sorted(rcpt for _, rcpts in smtp_server.envelopes for rcpt in rcpts) == [
        "alice@example.com",
        "bob@example.com",
    ]

    # WeCom: bob's warning (no userid, no mention) and alice's critical (mentioned)
    contents = posts(wecom_server)
    assert len(contents) == 2, contents
    (bob_post,) = [p for p in contents if WARNING_TITLE in p]
    (alice_post,) = [p for p in contents if CRITICAL_TITLE in p]
    assert "<@" not in bob_post
    assert alice_post.rstrip().endswith("<@all> <@alice>")
    assert critical["mention_all"] is True

    # inbox
    alice_inbox = await cli.json("inbox", "alice")
    assert alice_inbox["user"] == "alice"
    assert sorted(m["title"] for m in alice_inbox["messages"]) == sorted(
        [WARNING_TITLE, CRITICAL_TITLE]
    )
    assert [m["read"] for m in alice_inbox["messages"]] == [False, False]
    carol_inbox = await cli.json("inbox", "carol")
    assert [(m["title"], m["severity"], m["read"]) for m in carol_inbox["messages"]] == [
        (WARNING_TITLE, "warning", False)
    ]
    marked = await cli.json("inbox", "alice", "--mark-read")
    assert marked["marked_read"] == 2
    after = await cli.json("inbox", "alice")
    assert [m["read"] for m in after["messages"]] == [True, True]
    assert (await cli.json("inbox", "alice", "--unread"))["messages"] == []
    assert [m["read"] for m in (await cli.json("inbox", "carol"))["messages"]] == [False]

    # the PENDING listing and its filters
    pending = await cli.json("notifications", "list", "--status", "PENDING")
    assert sorted((n["recipient"], n["channel"]) for n in pending) == [
        ("alice", "email"),
        ("alice", "wecom"),
    ]
    assert all(datetime.fromisoformat(n["not_before"]) == release for n in pending)
    assert all(n["deferred"] for n in pending)
    only_email = await cli.json(*words("notifications list --status PENDING --channel email"))
    assert [(n["recipient"], n["channel"]) for n in only_email] == [("alice", "email")]
    opted_out = await cli.json(
        "notifications", "list", "--status", "SUPPRESSED", "--reason", "opted_out"
    )
    assert sorted((n["recipient"], n["channel"]) for n in opted_out) == [
        ("carol", "email"),
        ("carol", "wecom"),
    ]

    # idempotent: a second producer pass and a second drain change nothing
    again = await cli.json("produce")
    assert (again["alerts"], again["created"]) == (0, 0)
    second = await cli.json("run", "--drain")
    assert (second["produced"]["created"], second["published"], second["delivered"]) == (0, 0, 0)
    assert len(smtp_server.messages) == 2
    assert len(posts(wecom_server)) == 2
    assert by_identity(await cli.json("notifications", "list")) == rows
    alerts = await cli.json("alerts", "list")
    assert sorted(a["id"] for a in alerts) == [w, c]
    assert all(a["processed_at"] for a in alerts)
    assert await cli.json("dlq", "list") == []


# --- dead letters ---------------------------------------------------------------------------


async def test_dead_letters_listed_shown_replayed_and_delivered(
    cli: Cli, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    """A 550 and a WeCom 93000 dead-letter; replay (dry run, by id, --all --channel) delivers."""
    await cli.ok("db", "upgrade")
    await cli.ok(*words("users upsert dave --email dave@example.com --wecom-userid dave"))
    alert = await cli.json(
        "alerts", "create", "--title", "Cert expires in 3 days", "--recipient", "dave"
    )
    smtp_server.respond_with(550, "5.1.1 mailbox unavailable")
    wecom_server.fail_with(93000, times=1)

    report = await cli.json("run", "--drain")
    assert report["delivered"] == 3
    assert smtp_server.messages == []
    rows = by_identity(await cli.json("notifications", "list"))
    email = rows[(alert["id"], "dave", "email")]
    wecom = rows[(alert["id"], "dave", "wecom")]
    assert (email["state"], email["reason"], email["attempts"]) == ("DEAD", "smtp_5xx", 1)
    assert "550" in (email["error"] or "")
    assert (wecom["state"], wecom["reason"]) == ("DEAD", "wecom_93000")
    assert rows[(alert["id"], "dave", "system")]["state"] == "SENT"

    dead = await cli.json("dlq", "list")
    assert sorted((d["id"], d["channel"], d["reason"]) for d in dead) == sorted(
        [(email["id"], "email", "smtp_5xx"), (wecom["id"], "wecom", "wecom_93000")]
    )
    assert [d["id"] for d in await cli.json("dlq", "list", "--channel", "email")] == [email["id"]]
    assert [d["id"] for d in await cli.json("dlq", "list", "--reason", "wecom_93000")] == [
        wecom["id"]
    ]

    shown = await cli.json("dlq", "show", str(email["id"]))
    assert shown["state"] == "DEAD"
    (attempt,) = shown["attempt_log"]
    assert attempt["attempt"] == 1
    assert (attempt["outcome"], attempt["reason"]) == ("permanent", "smtp_5xx")
    assert "mailbox unavailable" in attempt["detail"]
    table = await cli.ok("dlq", "show", str(email["id"]))
    assert "smtp_5xx" in table.stdout and "mailbox unavailable" in table.stdout

    dry = await cli.json("dlq", "replay", "--id", str(email["id"]), "--dry-run")
    assert (dry["ids"], dry["dry_run"], dry["by_channel"]) == ([email["id"]], True, {"email": 1})
    after_dry = await cli.json("notifications", "show", str(email["id"]))
    assert (after_dry["state"], after_dry["attempts"]) == ("DEAD", 1)

    smtp_server.reset()
    replayed = await cli.json("dlq", "replay", "--id", str(email["id"]))
    assert (replayed["ids"], replayed["dry_run"]) == ([email["id"]], False)
    pending = await cli.json("notifications", "show", str(email["id"]))
    assert (pending["state"], pending["attempts"], pending["reason"]) == ("PENDING", 0, None)

    await cli.json("run", "--drain")
    delivered = await cli.json("notifications", "show", str(email["id"]))
    assert delivered["state"] == "SENT"
    assert [a["outcome"] for a in delivered["attempt_log"]] == ["permanent", "sent"]
    (mail,) = mail_to(smtp_server, "dave@example.com")
    assert is_message_id_of(mail["Message-ID"], email["id"])
    assert mail["Subject"] == "[WARNING] Cert expires in 3 days"

    sent_replay = await cli("dlq", "replay", "--id", str(email["id"]))
    assert_one_line_error(sent_replay, f"notification {email['id']} is SENT, not DEAD")
    show_sent = await cli("dlq", "show", str(email["id"]))
    assert_one_line_error(show_sent, "is SENT, not DEAD")
    unknown = await cli("dlq", "replay", "--id", "999999")
    assert_one_line_error(unknown, "no notification 999999")
    both = await cli("dlq", "replay", "--id", str(wecom["id"]), "--all")
    assert_one_line_error(both, "--id", "--all")

    assert posts(wecom_server) == []
    none_for_email = await cli.json("dlq", "replay", "--all", "--channel", "email", "--dry-run")
    assert none_for_email["ids"] == []
    by_channel = await cli.json("dlq", "replay", "--all", "--channel", "wecom")
    assert (by_channel["ids"], by_channel["by_channel"]) == ([wecom["id"]], {"wecom": 1})
    await cli.json("run", "--drain")
    assert (await cli.json("notifications", "show", str(wecom["id"])))["state"] == "SENT"
    (post,) = posts(wecom_server)
    assert "Cert expires in 3 days" in post and "<@dave>" in post
    assert await cli.json("dlq", "list") == []
    assert len(smtp_server.messages) == 1


# --- bad input --------------------------------------------------------------------------------

BAD_INPUTS: list[tuple[str, Sequence[str], Sequence[str]]] = [
    (
        "invalid-email",
        ["users", "upsert", "zed", "--email", "not-an-email"],
        ["email", "not-an-email", "invalid"],
    ),
    (
        "invalid-email-existing-user",
        ["users", "upsert", "bob", "--email", "bob@"],
        ["email", "invalid"],
    ),
    (
        "unknown-timezone",
        ["users", "upsert", "zed", "--timezone", "Mars/Olympus_Mons"],
        ["time zone", "Mars/Olympus_Mons"],
    ),
    (
        "quiet-hours-out-of-range",
        ["users", "upsert", "zed", "--quiet-hours", "25:00-07:00"],
        ["quiet hours", "25:00"],
    ),
    (
        "quiet-hours-malformed",
        ["users", "upsert", "zed", "--quiet-hours", "22-07"],
        ["quiet hours", "22:00-07:00"],
    ),
    (
        "quiet-hours-empty-window",
        ["users", "upsert", "zed", "--quiet-hours", "22:00-22:00"],
        ["quiet hours", "same time"],
    ),
    (
        "unknown-channel",
        ["users", "upsert", "zed", "--channels", "system,sms"],
        ["unknown channel", "sms"],
    ),
    ("invalid-username", ["users", "upsert", "bad name", "--email", "x@example.com"], ["username"]),
    (
        "unknown-recipient",
        ["alerts", "create", "--title", "t", "--recipient", "nobody"],
        ["unknown recipient", "nobody"],
    ),
    (
        "one-unknown-recipient",
        ["alerts", "create", "--title", "t", "--recipient", "bob", "--recipient", "ghost"],
        ["unknown recipient", "ghost"],
    ),
    ("empty-title", ["alerts", "create", "--title", "", "--recipient", "bob"], ["title", "empty"]),
    (
        "blank-title",
        ["alerts", "create", "--title", "   ", "--recipient", "bob"],
        ["title", "empty"],
    ),
    (
        "oversized-body",
        ["alerts", "create", "--title", "t", "--body", "x" * 70_000, "--recipient", "bob"],
        ["body", "70000 bytes", "65536"],
    ),
    (
        "crlf-title",
        ["alerts", "create", "--title", "Disk\r\nBcc: victim@example.com", "--recipient", "bob"],
        ["title", "single line"],
    ),
    (
        "lf-title",
        ["alerts", "create", "--title", "Disk\nfull", "--recipient", "bob"],
        ["title", "single line"],
    ),
    (
        "control-character-title",
        ["alerts", "create", "--title", "Disk\x07full", "--recipient", "bob"],
        ["title", "control character U+0007 at position 4"],
    ),
    (
        "escape-sequence-body",
        ["alerts", "create", "--title", "t", "--body", "a\x1b[2Jb", "--recipient", "bob"],
        ["body", "control character U+001B at position 1"],
    ),
    (
        "mention-all-on-a-warning",
        ["alerts", "create", "--title", "t", "--recipient", "bob", "--mention-all"],
        ["--mention-all", "critical"],
    ),
    (
        "wecom-userid-all",
        ["users", "upsert", "zed", "--wecom-userid", "all"],
        ["wecom_userid", "'all'", "reserved"],
    ),
    (
        "wecom-userid-with-a-mention",
        ["users", "upsert", "bob", "--wecom-userid", "bob> <@all"],
        ["wecom_userid", "invalid"],
    ),
    (
        "invalid-severity",
        ["alerts", "create", "--title", "t", "--severity", "urgent", "--recipient", "bob"],
        ["severity", "urgent", "info, warning, critical"],
    ),
    (
        "non-positive-expiry",
        ["alerts", "create", "--title", "t", "--recipient", "bob", "--expires-in", "0s"],
        ["--expires-in"],
    ),
    (
        "rich-markup-in-email",
        ["users", "upsert", "zed", "--email", "[/bold]"],
        ["email", "[/bold]"],
    ),
    ("replay-unknown-id", ["dlq", "replay", "--id", "999999"], ["no notification 999999"]),
    ("replay-without-selection", ["dlq", "replay"], ["--id", "--all"]),
    ("show-unknown-id", ["notifications", "show", "999999"], ["no notification 999999"]),
    ("unknown-status", ["notifications", "list", "--status", "NOPE"], ["unknown status", "NOPE"]),
    (
        "unknown-list-channel",
        ["notifications", "list", "--channel", "nope"],
        ["unknown channel", "nope"],
    ),
    ("unknown-dlq-channel", ["dlq", "list", "--channel", "nope"], ["unknown channel", "nope"]),
    ("bad-since", ["notifications", "list", "--since", "yesterday"], ["--since", "yesterday"]),
    ("inbox-of-unknown-user", ["inbox", "nobody"], ["unknown recipient", "nobody"]),
]
# Typer's own usage errors: a non-zero exit is all that is promised.
USAGE_ERRORS: list[tuple[str, Sequence[str]]] = [
    ("alert-without-recipient", ["alerts", "create", "--title", "t"]),
    ("non-numeric-id", ["dlq", "replay", "--id", "abc"]),
    ("negative-limit", ["notifications", "list", "--limit", "-1"]),
    ("negative-alerts-limit", ["alerts", "list", "--limit", "-1"]),
    ("negative-inbox-limit", ["inbox", "bob", "--limit", "-5"]),
]
# Ids beyond the database's integer range: still bad input, so still one line and no traceback.
HUGE_IDS: list[tuple[str, Sequence[str]]] = [
    ("replay", ["dlq", "replay", "--id", "99999999999999999999"]),
    ("show", ["notifications", "show", "99999999999999999999"]),
    ("resolve", ["alerts", "resolve", "99999999999999999999"]),
    ("alert-filter", ["notifications", "list", "--alert", "99999999999999999999"]),
    ("past-int32", ["dlq", "replay", "--id", "3000000000"]),
    ("zero", ["dlq", "show", "0"]),
]


async def _prepare_baseline(directory: Path) -> None:
    cli = Cli(base_env(directory), directory)
    await cli.ok("db", "upgrade")
    await cli.ok("users", "upsert", "alice", "--email", "alice@example.com")
    await cli.ok(*words("users upsert bob --email bob@example.com --timezone Europe/Berlin"))
    await cli.ok("alerts", "create", "--title", "Baseline alert", "--recipient", "bob")


@pytest.fixture(scope="module")
def baseline_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database with users alice and bob and one alert, built once per module."""
    directory = tmp_path_factory.mktemp("baseline")
    # A fresh thread: this module-scoped fixture must not touch the tests' event loops.
    run_in_thread(asyncio.run, _prepare_baseline(directory))
    return directory / "t.db"


@pytest.fixture
def baseline_cli(baseline_db: Path, tmp_path: Path) -> Cli:
    """The CLI on a private copy of the baseline database (no mail or WeCom configured)."""
    shutil.copy(baseline_db, tmp_path / "t.db")
    return Cli(base_env(tmp_path), tmp_path)


@pytest.mark.parametrize(("args", "needles"), [pytest.param(a, n, id=i) for i, a, n in BAD_INPUTS])
async def test_bad_input_is_one_line_error_and_changes_nothing(
    baseline_cli: Cli, args: Sequence[str], needles: Sequence[str]
) -> None:
    """Each bad input exits non-zero with one error line naming it, and writes no row."""
    before = snapshot(baseline_cli.cwd / "t.db")
    result = await baseline_cli(*args)
    assert_one_line_error(result, *needles)
    assert result.stdout == ""
    assert snapshot(baseline_cli.cwd / "t.db") == before


@pytest.mark.parametrize("args", [pytest.param(a, id=i) for i, a in USAGE_ERRORS])
async def test_usage_errors_fail_without_traceback(baseline_cli: Cli, args: Sequence[str]) -> None:
    """Missing or malformed options are typer's usage errors: non-zero, no traceback."""
    before = snapshot(baseline_cli.cwd / "t.db")
    result = await baseline_cli(*args)
    assert result.code != 0, str(result)
    assert "Traceback" not in result.stderr
    assert snapshot(baseline_cli.cwd / "t.db") == before


@pytest.mark.parametrize("args", [pytest.param(a, id=i) for i, a in HUGE_IDS])
async def test_ids_out_of_range_are_one_line_errors(baseline_cli: Cli, args: Sequence[str]) -> None:
    """An id no row can have is reported in one line, not with a traceback."""
    result = await baseline_cli(*args)
    assert result.code != 0, str(result)
    assert "Traceback" not in result.stderr, result.stderr[-500:]
    assert len(result.error_lines) == 1, str(result)


async def test_a_lease_that_cannot_cover_two_sends_is_a_configuration_error(
    baseline_cli: Cli,
) -> None:
    result = await baseline_cli.with_env(SEND_LEASE="50s", SEND_TIMEOUT="30s")("run", "--drain")
    assert_one_line_error(result, "SEND_LEASE (50s)", "twice SEND_TIMEOUT (30s)")


@pytest.mark.parametrize("args", [["worker", "--burst"], ["worker"], ["producer"]])
async def test_separate_processes_refuse_the_in_process_queue(
    baseline_cli: Cli, args: list[str]
) -> None:
    # memory:// cannot cross processes: a separate worker would receive nothing, and the rows
    # would go out only when QUEUE_LEASE ran out.
    result = await baseline_cli.with_env(QUEUE_URL="memory://")(*args, timeout=30)
    assert_one_line_error(result, "memory://", "tocsin run", "broker")
    assert result.code == 2


@pytest.mark.parametrize(
    "args",
    [
        ["users", "list"],
        ["users", "list", "--json"],
        ["alerts", "create", "--title", "t", "--recipient", "bob"],
        ["dlq", "list", "--json"],
        ["run", "--drain"],
    ],
    ids=["users-list", "users-list-json", "alerts-create", "dlq-list", "drain"],
)
async def test_commands_before_db_upgrade_say_to_run_it(tmp_path: Path, args: list[str]) -> None:
    """Without the schema every command gives the one-line `tocsin db upgrade` hint."""
    cli = Cli(base_env(tmp_path), tmp_path)
    result = await cli(*args)
    assert_one_line_error(result, "run `tocsin db upgrade`")
    assert result.stdout == ""


async def test_markup_like_text_is_printed_verbatim(baseline_cli: Cli) -> None:
    """Titles with [brackets] are data, not terminal markup, in tables and in errors."""
    baseline_cli = baseline_cli.with_env(COLUMNS="250")
    title = "[/x] disk [red]full[/red] on [b]db-1"
    created = await baseline_cli.ok("alerts", "create", "--title", title, "--recipient", "bob")
    assert "[/x] disk [red]full" in created.stdout
    listed = await baseline_cli.ok("alerts", "list")
    assert "[/x] disk [red]full" in listed.stdout
    inbox = await baseline_cli.ok("inbox", "bob")
    assert "Traceback" not in inbox.stderr


# --- secrets -----------------------------------------------------------------------------------

PASSWORD = "s3cr3t-pw-XYZ"
ROBOT_KEY = "robotkey-5b2d4f60-SECRET-a7d3"
USER_KEY = "userkey-9c1e3f88-SECRET-b6e2"


async def test_secrets_never_reach_output_logs_or_dead_letters(
    tmp_path: Path, wecom_server: WeComRobot
) -> None:
    """The SMTP password and both webhook keys stay out of every printout, log and stored error."""
    wecom_server.add_key(ROBOT_KEY)
    wecom_server.add_key(USER_KEY)
    async with SmtpSink(username="tocsin", password=PASSWORD) as sink:
        env = base_env(
            tmp_path,
            **channel_env(sink, wecom_server, ROBOT_KEY),
            EMAIL_USERNAME="tocsin",
            EMAIL_PASSWORD=PASSWORD,
            # The loopback sink speaks no TLS: clear-text AUTH has to be allowed by name.
            EMAIL_ALLOW_PLAINTEXT_AUTH="true",
            LOG_LEVEL="DEBUG",
            RELAY_INTERVAL="0.2s",
        )
        cli = Cli(env, tmp_path)
        seen: list[str] = []

        async def run(*args: str) -> Result:
            result = (await cli(*args)).ok()
            seen.extend([result.stdout, result.stderr])
            return result

        config = (await run("config", "--json")).json()
        assert config["EMAIL_PASSWORD"] == "***"
        assert config["WECOM_WEBHOOK_URL"] == "***"
        assert config["EMAIL_USERNAME"] == "tocsin"
        await run("config")
        await run("db", "upgrade")
        await run(
            "users", "upsert", "frank", "--email", "frank@example.com", "--wecom-userid", "frank"
        )
        erin = (
            await run(
                "users",
                "upsert",
                "erin",
                "--email",
                "erin@example.com",
                "--wecom-webhook",
                wecom_server.webhook_url(USER_KEY),
                "--json",
            )
        ).json()
        assert erin["contacts"]["wecom_webhook"].endswith("?key=***")
        await run("users", "list")
        await run("users", "list", "--json")
        alert = (
            await run(
                "alerts",
                "create",
                "--title",
                "Backup failed",
                "--recipient",
                "frank",
                "--recipient",
                "erin",
                "--json",
            )
        ).json()

        sink.respond_with(550, "5.7.1 relaying denied", times=1)
        wecom_server.fail_with(93000, times=1, key=ROBOT_KEY)
        await run("run", "--drain", "--json")
        assert sink.logins and set(sink.logins) == {"tocsin"}, "SMTP AUTH was not used"
        assert len(sink.messages) == 1
        assert len(posts(wecom_server, USER_KEY)) == 1

        dead = (await run("dlq", "list", "--json")).json()
        assert sorted(d["reason"] for d in dead) == ["smtp_5xx", "wecom_93000"]
        await run("dlq", "list")
        for row in dead:
            detail = (await run("dlq", "show", str(row["id"]), "--json")).json()
            assert detail["attempt_log"][0]["detail"], detail
            await run("dlq", "show", str(row["id"]))
        await run("notifications", "list", "--json")
        await run("queues", "--json")

        # The long-running process logs every delivery at INFO (DEBUG here).
        await run(
            "alerts",
            "create",
            "--title",
            "Backup failed again",
            "--recipient",
            "frank",
            "--recipient",
            "erin",
        )
        server = await Server.start("run", env=env, cwd=tmp_path)
        try:
            await eventually(lambda: _count_deliveries(server, 6), timeout=90)
        finally:
            code = await server.stop()
        seen.append(server.stderr)
        assert code == 0, server.stderr[-2000:]
        assert len(sink.messages) == 3
        assert len(posts(wecom_server, ROBOT_KEY)) == 1
        assert len(posts(wecom_server, USER_KEY)) == 2

    assert_no_secret(seen, PASSWORD, ROBOT_KEY, USER_KEY)
    stored = snapshot(tmp_path / "t.db")
    # The own robot's key is kept where sending needs it: the secret column of its contact
    # row, apart from the address that views show. Nowhere else.
    contacts = stored.pop("recipient_contacts")
    assert [row[3] for row in contacts if row[1] == "wecom_webhook"] == [USER_KEY]
    assert_no_secret(repr([row[:3] for row in contacts]), USER_KEY)
    assert_no_secret(repr(stored), PASSWORD, ROBOT_KEY, USER_KEY)
    assert alert["id"] == 1


async def _count_deliveries(server: Server, wanted: int) -> bool:
    assert server.running, f"tocsin run exited early:\n{server.stderr[-2000:]}"
    return sum('"event": "delivery"' in line for line in server.lines) >= wanted
