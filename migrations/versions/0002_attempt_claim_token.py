"""Records the claim token with each delivery attempt, unique per notification.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

A worker retries the record of a batch when the database connection dropped during its
commit; if that commit had in fact gone through, the retry must not store the attempts a
second time. One attempt per notification per claim makes the insert idempotent. Rows from
before this revision keep a NULL token, which never conflicts.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("delivery_attempts", sa.Column("claim_token", sa.String(length=32)))
    op.create_index(
        "uq_delivery_attempts_claim",
        "delivery_attempts",
        ["notification_id", "claim_token"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_delivery_attempts_claim", table_name="delivery_attempts")
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.drop_column("claim_token")
