"""Rate budgets shared by every replica: a row per destination key and a row per counted post.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "send_budgets",
        sa.Column("key_digest", sa.String(length=64), nullable=False),
        _utc("closed_until", nullable=True),
        _utc("last_used_at", nullable=True),
        sa.PrimaryKeyConstraint("key_digest"),
    )
    op.create_table(
        "send_budget_slots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_digest", sa.String(length=64), nullable=False),
        _utc("frees_at"),
        sa.ForeignKeyConstraint(["key_digest"], ["send_budgets.key_digest"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_send_budget_slots_key", "send_budget_slots", ["key_digest", "frees_at"])


def downgrade() -> None:
    op.drop_index("ix_send_budget_slots_key", table_name="send_budget_slots")
    op.drop_table("send_budget_slots")
    op.drop_table("send_budgets")
