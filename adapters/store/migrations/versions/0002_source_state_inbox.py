"""Source snapshots (what each source adapter last saw of a watched record) and the inbox of
verified pushes (webhook deliveries, imported rows), deduplicated per source.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = 255
SHORT = 64


def _id(table: str) -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(SHORT), nullable=False),
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants", ondelete="CASCADE"
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "source_state",
        *_id("source_state"),
        sa.Column("source", sa.String(SHORT), nullable=False),
        sa.Column("key", sa.String(KEY), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.UniqueConstraint(
            "tenant_id", "source", "key", name="uq_source_state_tenant_id_source_key"
        ),
    )
    op.create_table(
        "inbox",
        *_id("inbox"),
        sa.Column("source", sa.String(SHORT), nullable=False),
        sa.Column("topic", sa.String(SHORT), nullable=False),
        sa.Column("resource", sa.String(KEY), nullable=False),
        sa.Column("dedupe_key", sa.String(KEY), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.UniqueConstraint(
            "tenant_id", "source", "dedupe_key", name="uq_inbox_tenant_id_source_dedupe_key"
        ),
    )
    op.create_index("ix_inbox_tenant_source_status", "inbox", ["tenant_id", "source", "status"])


def downgrade() -> None:
    op.drop_index("ix_inbox_tenant_source_status", table_name="inbox")
    op.drop_table("inbox")
    op.drop_table("source_state")
