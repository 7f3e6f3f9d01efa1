"""Links a fallback notification to the one whose death it stands in for.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

A notification that dies on a channel with FALLBACK_<CHANNEL> set gets a new row per fallback
channel, whose fallback_of names it. Rows from before this revision are nobody's fallback.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Named, so that SQLite's batch mode (which rebuilds the table) can drop it again.
FOREIGN_KEY = "fk_notifications_fallback_of"
INDEX = "ix_notifications_fallback_of"


def upgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("fallback_of", sa.Integer(), nullable=True))
        batch.create_foreign_key(FOREIGN_KEY, "notifications", ["fallback_of"], ["id"])
        batch.create_index(INDEX, ["fallback_of"])


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_index(INDEX)
        batch.drop_constraint(FOREIGN_KEY, type_="foreignkey")
        batch.drop_column("fallback_of")
