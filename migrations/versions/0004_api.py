"""The HTTP API: alert keys (idempotency, Alertmanager fingerprints), API tokens, recipient groups.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "alert_keys",
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        _utc("created_at"),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"]),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_alert_keys_alert_id", "alert_keys", ["alert_id"])
    op.create_index("ix_alert_keys_created_at", "alert_keys", ["created_at"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        _utc("created_at"),
        _utc("last_used_at", nullable=True),
        _utc("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "recipient_groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        _utc("created_at"),
        _utc("updated_at"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "group_members",
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["recipient_groups.id"]),
        sa.ForeignKeyConstraint(["recipient_id"], ["recipients.id"]),
        sa.PrimaryKeyConstraint("group_id", "recipient_id"),
    )


def downgrade() -> None:
    op.drop_table("group_members")
    op.drop_table("recipient_groups")
    op.drop_table("api_tokens")
    op.drop_index("ix_alert_keys_created_at", table_name="alert_keys")
    op.drop_index("ix_alert_keys_alert_id", table_name="alert_keys")
    op.drop_table("alert_keys")
