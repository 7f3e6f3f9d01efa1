"""Recipient groups: named sets of users (e.g. an on-call team) that alerts can address."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from pipeline.clock import Clock
from pipeline.db import SessionFactory
from pipeline.models import GroupMember, Recipient, RecipientGroup
from pipeline.recipients import recipient_ids
from pipeline.sql import insert_ignoring_duplicates
from pipeline.validation import InputError, validate_recipients, validate_username

GROUP_NAME_MAX = 64
_GROUP_NAME = re.compile(rf"[A-Za-z0-9._@-]{{1,{GROUP_NAME_MAX}}}")


class UnknownGroup(InputError):
    """Names a group that does not exist (the API answers it with 404)."""


@dataclass(frozen=True)
class GroupRecord:
    """A group and its members' usernames, sorted."""

    name: str
    members: list[str]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Addressees:
    """Who an alert addressed by usernames and group names reaches, and what was not found."""

    usernames: list[str]
    unknown_users: list[str]
    unknown_groups: list[str]
    empty_groups: list[str]


@dataclass(frozen=True)
class Directory:
    """Known usernames and groups (with their members), looked up once for a batch."""

    users: frozenset[str]
    groups: dict[str, list[str]]

    def address(self, usernames: Iterable[str], groups: Iterable[str]) -> Addressees:
        """Returns the known usernames that usernames and groups reach, in first order.

        Nothing is refused: unknown users and groups and empty groups are returned apart, for
        a caller that must not reject a whole batch for one bad name.
        """
        users = list(dict.fromkeys(usernames))
        names = list(dict.fromkeys(groups))
        members = [m for name in names for m in self.groups.get(name, [])]
        return Addressees(
            usernames=[u for u in dict.fromkeys([*users, *members]) if u in self.users],
            unknown_users=[u for u in users if u not in self.users],
            unknown_groups=[g for g in names if g not in self.groups],
            empty_groups=[g for g in names if g in self.groups and not self.groups[g]],
        )


def validate_group_name(name: str) -> str:
    """Returns the group name stripped, or raises InputError unless it is 1-64 allowed chars."""
    stripped = name.strip()
    if _GROUP_NAME.fullmatch(stripped) is None:
        shown = stripped if len(stripped) <= 40 else stripped[:40] + "…"
        raise InputError(
            f"group name {shown!r} is invalid: use 1-{GROUP_NAME_MAX} letters, digits, "
            "'.', '_', '@' or '-'"
        )
    return stripped


async def upsert_group(
    sessions: SessionFactory,
    clock: Clock,
    name: str,
    members: Iterable[str],
    *,
    replace: bool = False,
) -> tuple[GroupRecord, bool]:
    """Creates the group or adds members to it (replace: sets exactly these members).

    Every member must be a known user; otherwise InputError names each unknown one and nothing
    changes. Returns the group as stored now and whether this call created it.
    """
    name = validate_group_name(name)
    usernames = list(dict.fromkeys(validate_username(member) for member in members))
    ids = await recipient_ids(sessions, usernames) if usernames else {}
    for _ in range(2):  # the second round follows a concurrent creation of the same group
        try:
            async with sessions() as session, session.begin():
                group, created = await _group_for_update(session, clock, name)
                if replace:
                    await session.execute(
                        delete(GroupMember).where(col(GroupMember.group_id) == group.id)
                    )
                if ids:
                    # A member added by a concurrent call is no conflict: it is there either way.
                    await session.execute(
                        insert_ignoring_duplicates(session, GroupMember),
                        [{"group_id": group.id, "recipient_id": rid} for rid in ids.values()],
                    )
                return await _record(session, group), created
        except IntegrityError:  # a concurrent call created the group first: update that one
            continue
    raise InputError(f"group {name!r} is being changed concurrently: try again")


async def _group_for_update(
    session: AsyncSession, clock: Clock, name: str
) -> tuple[RecipientGroup, bool]:
    now = clock.now()
    # FOR UPDATE: concurrent changes of one group take turns (PostgreSQL; SQLite serialises).
    found = await session.execute(
        select(RecipientGroup).where(col(RecipientGroup.name) == name).with_for_update()
    )
    group = found.scalar_one_or_none()
    created = group is None
    if group is None:
        group = RecipientGroup(name=name, created_at=now, updated_at=now)
    group.updated_at = now
    session.add(group)
    await session.flush()
    return group, created


async def _record(session: AsyncSession, group: RecipientGroup) -> GroupRecord:
    rows = await session.execute(
        select(col(Recipient.username))
        .join(GroupMember, col(GroupMember.recipient_id) == col(Recipient.id))
        .where(col(GroupMember.group_id) == group.id)
        .order_by(col(Recipient.username))
    )
    return GroupRecord(group.name, list(rows.scalars()), group.created_at, group.updated_at)


async def list_groups(sessions: SessionFactory) -> list[GroupRecord]:
    """Returns every group with its members, by name."""
    async with sessions() as session:
        groups = await session.execute(select(RecipientGroup).order_by(col(RecipientGroup.name)))
        return [await _record(session, group) for group in groups.scalars()]


async def get_group(sessions: SessionFactory, name: str) -> GroupRecord:
    """Returns the named group; raises UnknownGroup when there is none."""
    name = validate_group_name(name)
    async with sessions() as session:
        found = await session.execute(
            select(RecipientGroup).where(col(RecipientGroup.name) == name)
        )
        group = found.scalar_one_or_none()
        if group is None:
            raise UnknownGroup(_unknown(name))
        return await _record(session, group)


async def delete_group(sessions: SessionFactory, name: str) -> GroupRecord:
    """Deletes the named group (its users stay) and returns what it was; UnknownGroup if none."""
    name = validate_group_name(name)
    async with sessions() as session, session.begin():
        found = await session.execute(
            select(RecipientGroup).where(col(RecipientGroup.name) == name)
        )
        group = found.scalar_one_or_none()
        if group is None:
            raise UnknownGroup(_unknown(name))
        record = await _record(session, group)
        await session.execute(delete(GroupMember).where(col(GroupMember.group_id) == group.id))
        await session.delete(group)
    return record


def _unknown(name: str) -> str:
    return f"no group named {name!r}; create it with `tocsin groups upsert`"


async def group_usernames(sessions: SessionFactory, names: Iterable[str]) -> dict[str, list[str]]:
    """Maps each existing group among names to its members' usernames (missing groups absent)."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    async with sessions() as session:
        groups = await session.execute(
            select(col(RecipientGroup.name)).where(col(RecipientGroup.name).in_(wanted))
        )
        found: dict[str, list[str]] = {name: [] for name in groups.scalars()}
        rows = await session.execute(
            select(col(RecipientGroup.name), col(Recipient.username))
            .join(GroupMember, col(GroupMember.group_id) == col(RecipientGroup.id))
            .join(Recipient, col(Recipient.id) == col(GroupMember.recipient_id))
            .where(col(RecipientGroup.name).in_(wanted))
            .order_by(col(Recipient.username))
        )
        for group, username in rows:
            found[group].append(username)
    return found


async def members_of(sessions: SessionFactory, name: str) -> list[str]:
    """Returns the usernames in the named group; raises UnknownGroup when there is none."""
    name = validate_group_name(name)
    found = await group_usernames(sessions, [name])
    if name not in found:
        raise UnknownGroup(_unknown(name))
    return found[name]


async def addressed_usernames(
    sessions: SessionFactory, recipients: list[str], groups: list[str]
) -> list[str]:
    """Returns whom an alert reaches: recipients, then each group's members, each once.

    Groups are expanded now: an alert goes to the members a group has when it comes in. Raises
    InputError naming every unknown group, or when the names reach nobody at all.
    """
    if not groups:
        if not recipients:
            raise InputError("an alert must name at least one recipient or group")
        return validate_recipients(recipients)
    usernames = [validate_username(name) for name in recipients]
    names = list(dict.fromkeys(validate_group_name(name) for name in groups))
    found = await group_usernames(sessions, names)
    unknown = [name for name in names if name not in found]
    if unknown:
        shown = ", ".join(repr(name) for name in unknown)
        raise InputError(f"no group named {shown}; create it with `tocsin groups upsert`")
    reached = list(dict.fromkeys([*usernames, *(m for name in names for m in found[name])]))
    if not reached:
        raise InputError(f"the groups {', '.join(names)} have no members and no user is named")
    return reached


async def directory(
    sessions: SessionFactory, usernames: Iterable[str], groups: Iterable[str]
) -> Directory:
    """Looks up which of usernames exist and which of groups exist with whom, for a batch."""
    members = await group_usernames(sessions, groups)
    known = await _known_usernames(sessions, list(dict.fromkeys(usernames)))
    # A group's members are users by construction (foreign key).
    return Directory(frozenset(known.union(*members.values())), members)


async def _known_usernames(sessions: SessionFactory, names: list[str]) -> set[str]:
    if not names:
        return set()
    async with sessions() as session:
        rows = await session.execute(
            select(col(Recipient.username)).where(col(Recipient.username).in_(names))
        )
        return set(rows.scalars())
