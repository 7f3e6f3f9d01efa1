"""/api/v1/groups: recipient groups (e.g. an on-call team) that alerts and Alertmanager address."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Response
from pydantic import BaseModel, Field

from pipeline.api.auth import Admin, Read
from pipeline.api.deps import tocsin
from pipeline.api.problems import responses
from pipeline.app import App
from pipeline.groups import (
    GROUP_NAME_MAX,
    GroupRecord,
    UnknownGroup,
    delete_group,
    get_group,
    list_groups,
    upsert_group,
)

router = APIRouter(prefix="/groups", tags=["groups"])

# Bounded like an alert's recipients; the body limit bounds it too.
MEMBERS_MAX = 10_000
GroupName = Annotated[
    str, Path(description="The group's name, e.g. db-oncall.", max_length=GROUP_NAME_MAX)
]


class Group(BaseModel):
    """A recipient group and its members' usernames, sorted."""

    name: str
    members: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: GroupRecord) -> Group:
        """The API view of a stored group."""
        return cls(
            name=record.name,
            members=record.members,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


class GroupMembers(BaseModel):
    """The members a group is to have: usernames of existing users (may be empty)."""

    members: list[str] = Field(max_length=MEMBERS_MAX, examples=[["alice", "bob"]])


@router.get("", response_model=list[Group], responses=responses(401, 403))
async def groups_list(app: Annotated[App, Depends(tocsin)], _token: Read) -> list[Group]:
    """Lists every group with its members, by name."""
    return [Group.of(record) for record in await list_groups(app.sessions)]


@router.get("/{name}", response_model=Group, responses=responses(401, 403, 404, 422))
async def groups_get(name: GroupName, app: Annotated[App, Depends(tocsin)], _token: Read) -> Group:
    """Returns one group with its members."""
    try:
        return Group.of(await get_group(app.sessions, name))
    except UnknownGroup as exc:
        raise HTTPException(404, str(exc)) from None


@router.put(
    "/{name}",
    response_model=Group,
    status_code=200,
    responses={201: {"model": Group, "description": "Created"}, **responses(401, 403, 422)},
)
async def groups_put(
    name: GroupName,
    body: GroupMembers,
    response: Response,
    app: Annotated[App, Depends(tocsin)],
    _token: Admin,
) -> Group:
    """Creates the group or sets its members to exactly these (201 when created).

    Every member must be an existing user: otherwise 422 names each unknown one and nothing
    changes.
    """
    record, created = await upsert_group(app.sessions, app.clock, name, body.members, replace=True)
    if created:
        response.status_code = 201
    return Group.of(record)


@router.delete("/{name}", status_code=204, responses=responses(401, 403, 404, 422))
async def groups_delete(
    name: GroupName, app: Annotated[App, Depends(tocsin)], _token: Admin
) -> Response:
    """Deletes the group; its users stay."""
    try:
        await delete_group(app.sessions, name)
    except UnknownGroup as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(status_code=204)
