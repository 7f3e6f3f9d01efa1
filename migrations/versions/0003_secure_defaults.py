"""Secure defaults: webhook keys apart from their URL, alert dedup and mentions, audit, installation.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

- `recipients.wecom_webhook` (a whole URL with its key) becomes `wecom_webhook_origin`
  (scheme://host[:port], shown) and `wecom_webhook_key` (the credential, masked everywhere).
  A stored URL that is not a robot URL keeps its origin and loses nothing else worth keeping:
  the send-time URL policy refuses it (`url_refused`) instead of posting it.
- `alerts.dedup_key`, `alerts.duplicate_of` (set by the producer on a repeat) and
  `alerts.mention_all`.
- `audit_log`: one row per bulk operator action (replay, purge).
- `installation`: one row with a random id, made here, so two installations never share a
  Message-ID.
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROBOT_PATH = "/cgi-bin/webhook/send"


def _utc(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _split(url: str) -> tuple[str | None, str | None]:
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None, None
    if not parts.scheme or not host:
        return None, None
    origin = f"{parts.scheme}://{host}" + (f":{port}" if port else "")
    keys = parse_qs(parts.query).get("key") or [""]
    return origin[:256], keys[0][:128] or None


def upgrade() -> None:
    with op.batch_alter_table("recipients") as batch:
        batch.add_column(sa.Column("wecom_webhook_origin", sa.String(length=256)))
        batch.add_column(sa.Column("wecom_webhook_key", sa.String(length=128)))
    recipients = sa.table(
        "recipients",
        sa.column("id", sa.Integer()),
        sa.column("wecom_webhook", sa.String()),
        sa.column("wecom_webhook_origin", sa.String()),
        sa.column("wecom_webhook_key", sa.String()),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(recipients.c.id, recipients.c.wecom_webhook).where(
            recipients.c.wecom_webhook.is_not(None)
        )
    ).all()
    for recipient_id, url in rows:
        origin, key = _split(url)
        bind.execute(
            recipients.update()
            .where(recipients.c.id == recipient_id)
            .values(wecom_webhook_origin=origin, wecom_webhook_key=key)
        )
    with op.batch_alter_table("recipients") as batch:
        batch.drop_column("wecom_webhook")

    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("dedup_key", sa.String(length=200)))
        batch.add_column(sa.Column("duplicate_of", sa.Integer()))
        batch.create_foreign_key("fk_alerts_duplicate_of", "alerts", ["duplicate_of"], ["id"])
        batch.add_column(
            sa.Column("mention_all", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index("ix_alerts_dedup_key", "alerts", ["dedup_key"])
    with op.batch_alter_table("alerts") as batch:
        batch.alter_column("mention_all", server_default=None)

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        _utc("at"),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("selection", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("ids", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])

    installation = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("installation_id", sa.String(length=36), nullable=False),
        _utc("created_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(
        installation,
        [{"id": 1, "installation_id": str(uuid.uuid4()), "created_at": datetime.now(UTC)}],
    )


def downgrade() -> None:
    op.drop_table("installation")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_alerts_dedup_key", table_name="alerts")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("mention_all")
        batch.drop_constraint("fk_alerts_duplicate_of", type_="foreignkey")
        batch.drop_column("duplicate_of")
        batch.drop_column("dedup_key")

    with op.batch_alter_table("recipients") as batch:
        batch.add_column(sa.Column("wecom_webhook", sa.String(length=512)))
    recipients = sa.table(
        "recipients",
        sa.column("id", sa.Integer()),
        sa.column("wecom_webhook", sa.String()),
        sa.column("wecom_webhook_origin", sa.String()),
        sa.column("wecom_webhook_key", sa.String()),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(
            recipients.c.id, recipients.c.wecom_webhook_origin, recipients.c.wecom_webhook_key
        ).where(recipients.c.wecom_webhook_origin.is_not(None))
    ).all()
    for recipient_id, origin, key in rows:
        url = f"{origin}{ROBOT_PATH}" + (f"?key={key}" if key else "")
        bind.execute(
            recipients.update().where(recipients.c.id == recipient_id).values(wecom_webhook=url)
        )
    with op.batch_alter_table("recipients") as batch:
        batch.drop_column("wecom_webhook_key")
        batch.drop_column("wecom_webhook_origin")
