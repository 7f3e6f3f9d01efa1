"""Recipient groups: upsert (add or replace), list, get, delete, and turning names into users."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.config import Settings
from pipeline.groups import (
    Addressees,
    Directory,
    UnknownGroup,
    delete_group,
    directory,
    get_group,
    list_groups,
    members_of,
    upsert_group,
    validate_group_name,
)
from pipeline.validation import InputError
from tests.support.pipeline import add_user, open_app


async def test_upsert_adds_members_and_replace_sets_them(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        for name in ("alice", "bob", "carol"):
            await add_user(app, name)
        first, created = await upsert_group(app.sessions, app.clock, "db-oncall", ["bob", "alice"])
        assert created and first.members == ["alice", "bob"]
        added, created = await upsert_group(app.sessions, app.clock, "db-oncall", ["carol", "bob"])
        assert not created and added.members == ["alice", "bob", "carol"]
        replaced, _ = await upsert_group(
            app.sessions, app.clock, " db-oncall ", ["carol"], replace=True
        )
        assert replaced.members == ["carol"]
        emptied, _ = await upsert_group(app.sessions, app.clock, "db-oncall", [], replace=True)
        assert emptied.members == []
        assert (await get_group(app.sessions, "db-oncall")).members == []


async def test_unknown_members_are_named_and_nothing_changes(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await add_user(app, "alice")
        await upsert_group(app.sessions, app.clock, "ops", ["alice"])
        with pytest.raises(InputError, match=r"unknown recipient\(s\): zed, yan"):
            await upsert_group(
                app.sessions, app.clock, "ops", ["zed", "alice", "yan"], replace=True
            )
        with pytest.raises(InputError, match="username"):
            await upsert_group(app.sessions, app.clock, "ops", ["not a name"])
        assert (await get_group(app.sessions, "ops")).members == ["alice"]
        with pytest.raises(InputError, match="unknown recipient"):
            await upsert_group(app.sessions, app.clock, "new", ["zed"])
        assert [g.name for g in await list_groups(app.sessions)] == ["ops"]


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "db/oncall", "ops\n"])
def test_group_names_are_checked(name: str) -> None:
    if name == "ops\n":
        assert validate_group_name(name) == "ops"  # surrounding whitespace is stripped
        return
    with pytest.raises(InputError, match="group name"):
        validate_group_name(name)


async def test_list_get_delete(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await add_user(app, "alice")
        await add_user(app, "bob")
        await upsert_group(app.sessions, app.clock, "web", ["bob"])
        await upsert_group(app.sessions, app.clock, "db", ["alice", "bob"])
        listed = await list_groups(app.sessions)
        assert [(g.name, g.members) for g in listed] == [("db", ["alice", "bob"]), ("web", ["bob"])]
        deleted = await delete_group(app.sessions, "db")
        assert deleted.members == ["alice", "bob"]
        with pytest.raises(UnknownGroup, match="no group named 'db'"):
            await get_group(app.sessions, "db")
        with pytest.raises(UnknownGroup):
            await delete_group(app.sessions, "db")
        with pytest.raises(UnknownGroup):
            await members_of(app.sessions, "db")
        assert await members_of(app.sessions, "web") == ["bob"]
        # The users stay, and a group can be made again under the same name.
        again, created = await upsert_group(app.sessions, app.clock, "db", ["alice"])
        assert created and again.members == ["alice"]


async def test_concurrent_upserts_of_one_new_group_make_one_group(
    postgres_settings: Settings,
) -> None:
    async with open_app(postgres_settings) as app:
        for name in ("alice", "bob"):
            await add_user(app, name)
        results = await asyncio.gather(
            *(upsert_group(app.sessions, app.clock, "race", [n]) for n in ("alice", "bob") * 3)
        )
        assert sum(created for _, created in results) == 1
        assert (await get_group(app.sessions, "race")).members == ["alice", "bob"]


async def test_directory_resolves_users_and_groups_in_first_order(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        for name in ("alice", "bob", "carol"):
            await add_user(app, name)
        await upsert_group(app.sessions, app.clock, "db", ["carol", "alice"])
        await upsert_group(app.sessions, app.clock, "empty", [])
        found = await directory(app.sessions, ["bob", "zed"], ["db", "empty", "nope"])
        assert found.address(["bob", "zed"], ["db", "empty", "nope"]) == Addressees(
            usernames=["bob", "alice", "carol"],
            unknown_users=["zed"],
            unknown_groups=["nope"],
            empty_groups=["empty"],
        )


@pytest.mark.parametrize(
    ("users", "groups", "reached", "unknown_users", "unknown_groups"),
    [
        ([], [], [], [], []),
        (["alice", "alice"], [], ["alice"], [], []),
        (["zed"], ["team"], ["alice", "bob"], ["zed"], []),
        (["bob"], ["team", "team"], ["bob", "alice"], [], []),
        ([], ["other"], [], [], ["other"]),
    ],
)
def test_address_is_pure(
    users: list[str],
    groups: list[str],
    reached: list[str],
    unknown_users: list[str],
    unknown_groups: list[str],
) -> None:
    known = Directory(frozenset({"alice", "bob"}), {"team": ["alice", "bob"]})
    addressed = known.address(users, groups)
    assert addressed.usernames == reached
    assert addressed.unknown_users == unknown_users
    assert addressed.unknown_groups == unknown_groups
