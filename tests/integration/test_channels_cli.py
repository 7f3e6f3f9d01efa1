"""The CLI on channels: `tocsin channels`, their settings in `tocsin config` and as one-line
errors, and any channel's contact through `users upsert --contact KIND=ADDRESS`."""

from __future__ import annotations

from pathlib import Path

import pytest

from channels.registry import CHANNEL_NAMES
from tests.integration.cli import Cli, base_env, channel_env
from tests.integration.test_cli import assert_one_line_error
from tests.support.secrets import assert_no_secret
from tests.support.smtp_server import SmtpSink
from tests.support.wecom_server import WeComRobot

ROBOT_KEY = "Planted-Robot-Key-93ab"
ROBOT = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={ROBOT_KEY}"


@pytest.fixture
async def cli(tmp_path: Path) -> Cli:
    migrated = Cli(base_env(tmp_path), tmp_path)
    await migrated.ok("db", "upgrade")
    return migrated


async def test_channels_says_which_are_on_why_not_and_what_they_read(cli: Cli) -> None:
    off = {row["channel"]: row for row in await cli.json("channels")}
    on = cli.with_env(EMAIL_ENABLED="true", EMAIL_SMTP_SERVER="127.0.0.1", WECOM_ENABLED="true")
    by_name = {row["channel"]: row for row in await on.json("channels")}
    assert tuple(off) == CHANNEL_NAMES
    assert off["system"] == {
        "channel": "system",
        "status": "on",
        "contacts": [],
        "waits_out_quiet_hours": False,
        "falls_back_to": [],
    }
    assert off["email"]["status"].startswith("off: ")
    assert "EMAIL_ENABLED" in off["email"]["status"]
    assert off["wecom"]["contacts"] == ["wecom_userid", "wecom_webhook"]
    assert by_name["email"]["status"] == by_name["wecom"]["status"] == "on"


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"EMAIL_SMTP_PORT": "99999"}, ["EMAIL_SMTP_PORT"]),
        ({"EMAIL_SECURITY": "tls9"}, ["EMAIL_SECURITY"]),
        ({"WECOM_WEBHOOK_URL": ROBOT.replace(".qq.com", ".qq.com:99999")}, ["WECOM_WEBHOOK_URL"]),
        ({"WECOM_ALLOWED_HOSTS": "user@example.com"}, ["WECOM_ALLOWED_HOSTS"]),
        ({"EMAIL_SECURITY": "none", "EMAIL_USERNAME": "bot"}, ["EMAIL_ALLOW_PLAINTEXT_AUTH"]),
    ],
    ids=["port", "security", "robot-port", "allowlist", "plaintext-auth"],
)
async def test_a_bad_channel_setting_is_one_line_naming_it(
    cli: Cli, env: dict[str, str], needles: list[str]
) -> None:
    for args in (["users", "list"], ["config"]):
        result = await cli.with_env(**env)(*args)
        assert_one_line_error(result, "invalid configuration", *needles)
        assert_no_secret(result.stderr, ROBOT_KEY)


async def test_config_shows_every_channel_setting_with_secrets_masked(cli: Cli) -> None:
    shown = await cli.with_env(
        WECOM_WEBHOOK_URL=ROBOT, EMAIL_PASSWORD="Planted-Smtp-77", EMAIL_SMTP_SERVER="mail.test"
    ).json("config")
    assert shown["EMAIL_SMTP_SERVER"] == "mail.test"
    assert shown["EMAIL_PASSWORD"] == shown["WECOM_WEBHOOK_URL"] == "***"
    assert shown["WECOM_RATE_LIMIT"] == "20/1m"
    assert shown["DATABASE_URL"].startswith("sqlite+aiosqlite:///")


async def test_any_channels_contact_is_set_and_removed_by_kind(cli: Cli) -> None:
    await cli.ok(
        "users", "upsert", "carol", "--contact", "email=carol@example.com",
        "--contact", f"wecom_webhook={ROBOT}", "--wecom-userid", "carol.w",
    )  # fmt: skip
    [carol] = await cli.json("users", "list")
    await cli.ok("users", "upsert", "carol", "--contact", "email=")
    [after] = await cli.json("users", "list")
    unknown = await cli("users", "upsert", "carol", "--contact", "pager=123")
    shapeless = await cli("users", "upsert", "carol", "--contact", "email")
    assert carol["contacts"] == {
        "email": "carol@example.com",
        "wecom_userid": "carol.w",
        "wecom_webhook": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=***",
    }
    assert "email" not in after["contacts"] and "wecom_userid" in after["contacts"]
    assert_one_line_error(unknown, "unknown contact 'pager'", "email, wecom_userid, wecom_webhook")
    assert_one_line_error(shapeless, "--contact", "KIND=ADDRESS")


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"FALLBACK_WECOM": "nosuch"}, ["FALLBACK_WECOM", "unknown channel 'nosuch'"]),
        ({"FALLBACK_EMAIL": "email"}, ["FALLBACK_EMAIL", "cannot fall back to itself"]),
        ({"FALLBACK_WECOM": "email", "FALLBACK_EMAIL": "system"}, ["FALLBACK_EMAIL"]),
    ],
    ids=["unknown", "itself", "chain"],
)
async def test_a_bad_fallback_is_one_line_naming_it(
    cli: Cli, env: dict[str, str], needles: list[str]
) -> None:
    for args in (["users", "list"], ["config"]):
        assert_one_line_error(await cli.with_env(**env)(*args), "invalid configuration", *needles)


async def test_config_and_channels_show_the_fallbacks(cli: Cli) -> None:
    falling = cli.with_env(FALLBACK_WECOM="Email, system")
    shown = await falling.json("config")
    listed = {row["channel"]: row["falls_back_to"] for row in await falling.json("channels")}
    assert (shown["FALLBACK_WECOM"], shown["FALLBACK_EMAIL"]) == ("email,system", "")
    assert listed == {name: [] for name in CHANNEL_NAMES} | {"wecom": ["email", "system"]}


async def test_notifications_show_links_a_fallback_both_ways(
    cli: Cli, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    wecom_server.remove_key("k1")  # the robot is gone: 93000
    falling = cli.with_env(**channel_env(smtp_server, wecom_server), FALLBACK_WECOM="email")
    await falling.ok("users", "upsert", "dave", "--email", "dave@example.com")
    await falling.ok("alerts", "create", "--title", "Disk full", "--recipient", "dave")
    await falling.json("run", "--drain")
    by_channel = {row["channel"]: row for row in await falling.json("notifications", "list")}
    wecom, email = by_channel["wecom"], by_channel["email"]
    dead = await falling.json("notifications", "show", str(wecom["id"]))
    standing_in = await falling.json("notifications", "show", str(email["id"]))
    dead_table = (await falling.ok("dlq", "show", str(wecom["id"]))).stdout
    standing_in_table = (await falling.ok("notifications", "show", str(email["id"]))).stdout
    assert (dead["state"], dead["reason"], dead["fallback_of"]) == ("DEAD", "wecom_93000", None)
    assert dead["fell_back_to"] == [{"id": email["id"], "channel": "email", "state": "SENT"}]
    assert (standing_in["state"], standing_in["fallback_of"]) == ("SENT", wecom["id"])
    assert standing_in["fell_back_to"] == []
    assert f"fell back to #{email['id']} (email, SENT)" in dead_table
    assert f"fallback of #{wecom['id']}" in standing_in_table
    assert [m["To"] for m in smtp_server.messages] == ["dave@example.com"]
