"""`tocsin groups ...` end to end: upsert (add, --replace), list, show, delete, one-line errors."""

from __future__ import annotations

from tests.integration.cli import Cli


async def test_groups_commands(cli: Cli) -> None:
    await cli.ok("db", "upgrade")
    for name in ("alice", "bob", "carol"):
        await cli.ok("users", "upsert", name)
    made = await cli.json("groups", "upsert", "db-oncall", "--member", "bob", "--member", "alice")
    assert made["members"] == ["alice", "bob"]
    added = await cli.json("groups", "upsert", "db-oncall", "--member", "carol")
    assert added["members"] == ["alice", "bob", "carol"]
    replaced = await cli.json("groups", "upsert", "db-oncall", "--member", "bob", "--replace")
    assert replaced["members"] == ["bob"]
    await cli.ok("groups", "upsert", "web")
    listed = await cli.json("groups", "list")
    assert [(g["name"], g["members"]) for g in listed] == [("db-oncall", ["bob"]), ("web", [])]
    assert (await cli.json("groups", "show", "db-oncall"))["members"] == ["bob"]
    table = (await cli.ok("groups", "list")).stdout
    assert "db-oncall" in table and "bob" in table
    deleted = await cli.json("groups", "delete", "web")
    assert deleted == {"deleted": {**deleted["deleted"], "name": "web", "members": []}}

    unknown = await cli("groups", "upsert", "db-oncall", "--member", "ghost", "--member", "bob")
    assert unknown.code == 2
    assert unknown.error_lines == [
        "error: unknown recipient(s): ghost; create them with `tocsin users upsert`"
    ]
    missing = await cli("groups", "show", "web")
    assert missing.code == 2 and len(missing.error_lines) == 1
    assert "no group named 'web'" in missing.stderr
    bad = await cli("groups", "delete", "a b")
    assert bad.code == 2 and "group name" in bad.stderr
    assert (await cli.json("groups", "show", "db-oncall"))["members"] == ["bob"]


async def test_an_alert_addressed_to_a_group_reaches_its_members(cli: Cli) -> None:
    await cli.ok("db", "upgrade")
    for name in ("alice", "bob", "carol"):
        await cli.ok("users", "upsert", name, "--channels", "system")
    await cli.ok("groups", "upsert", "db-oncall", "--member", "bob", "--member", "alice")
    created = await cli.json(
        "alerts", "create", "--title", "Disk full", "--group", "db-oncall",
        "--recipient", "carol", "--recipient", "alice", "--json",
    )  # fmt: skip
    assert created["recipients"] == ["alice", "bob", "carol"]
    unknown = await cli("alerts", "create", "--title", "x", "--group", "nobody")
    assert unknown.code == 2
    assert unknown.error_lines == [
        "error: no group named 'nobody'; create it with `tocsin groups upsert`"
    ]
    neither = await cli("alerts", "create", "--title", "x")
    assert neither.code == 2
    assert neither.error_lines == ["error: an alert must name at least one recipient or group"]
