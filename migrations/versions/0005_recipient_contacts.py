"""Recipient contacts as a map by kind (the kinds channels declare), instead of one column each.

The columns email, wecom_userid, wecom_webhook_origin and wecom_webhook_key move into
recipient_contacts rows (kinds email, wecom_userid, wecom_webhook: the robot's key stays apart
from its origin, in the secret column). The downgrade carries them back.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# kind: (address column, secret column)
_COLUMNS = {
    "email": ("email", None),
    "wecom_userid": ("wecom_userid", None),
    "wecom_webhook": ("wecom_webhook_origin", "wecom_webhook_key"),
}
_LENGTHS = {"email": 320, "wecom_userid": 64, "wecom_webhook_origin": 256, "wecom_webhook_key": 128}

_contacts = sa.table(
    "recipient_contacts",
    sa.column("recipient_id", sa.Integer()),
    sa.column("kind", sa.String()),
    sa.column("address", sa.String()),
    sa.column("secret", sa.String()),
)
_recipients = sa.table(
    "recipients",
    sa.column("id", sa.Integer()),
    *(sa.column(name, sa.String()) for name in _LENGTHS),
)


def upgrade() -> None:
    op.create_table(
        "recipient_contacts",
        sa.Column("recipient_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("address", sa.String(length=512), nullable=False),
        sa.Column("secret", sa.String(length=256)),
        sa.ForeignKeyConstraint(["recipient_id"], ["recipients.id"]),
        sa.PrimaryKeyConstraint("recipient_id", "kind"),
    )
    bind = op.get_bind()
    for kind, (address, secret) in _COLUMNS.items():
        column = _recipients.c[address]
        secret_column = _recipients.c[secret] if secret else sa.null()
        rows = bind.execute(
            sa.select(_recipients.c.id, column, secret_column).where(column.is_not(None))
        ).all()
        if rows:
            bind.execute(
                _contacts.insert(),
                [
                    {"recipient_id": rid, "kind": kind, "address": value, "secret": hidden}
                    for rid, value, hidden in rows
                ],
            )
    with op.batch_alter_table("recipients") as batch:
        for name in _LENGTHS:
            batch.drop_column(name)


def downgrade() -> None:
    with op.batch_alter_table("recipients") as batch:
        for name, length in _LENGTHS.items():
            batch.add_column(sa.Column(name, sa.String(length=length)))
    bind = op.get_bind()
    for kind, (address, secret) in _COLUMNS.items():
        rows = bind.execute(
            sa.select(_contacts.c.recipient_id, _contacts.c.address, _contacts.c.secret).where(
                _contacts.c.kind == kind
            )
        ).all()
        for rid, value, hidden in rows:
            values = {address: value[: _LENGTHS[address]]}
            if secret:
                values[secret] = (hidden or "")[: _LENGTHS[secret]] or None
            bind.execute(_recipients.update().where(_recipients.c.id == rid).values(**values))
    op.drop_table("recipient_contacts")
