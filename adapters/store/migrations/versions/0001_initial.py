"""Initial schema: tenants, cursors, engagements, clients, phases, milestones, intent log,
audit log and OAuth tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = 255
SHORT = 64


def _id(table: str) -> list[SchemaItem]:
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.String(SHORT), nullable=False),
        sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants", ondelete="CASCADE"
        ),
    ]


def _utc(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _enum(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.String(32), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(SHORT), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.current_timestamp(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
    )
    op.create_table(
        "source_cursors",
        *_id("source_cursors"),
        sa.Column("system", sa.String(SHORT), nullable=False),
        sa.Column("stream", sa.String(SHORT), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.UniqueConstraint(
            "tenant_id", "system", "stream", name="uq_source_cursors_tenant_id_system_stream"
        ),
    )
    op.create_table(
        "engagements",
        *_id("engagements"),
        sa.Column("source", sa.String(SHORT), nullable=False),
        sa.Column("key", sa.String(KEY), nullable=False),
        sa.Column("client_key", sa.String(KEY), nullable=False),
        sa.Column("client_name", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        _enum("kind"),
        sa.Column("work_type", sa.Text(), nullable=True),
        sa.Column("template", sa.Text(), nullable=True),
        sa.Column("fee_minor", sa.BigInteger(), nullable=True),
        sa.Column("fee_currency", sa.String(3), nullable=True),
        sa.Column("period", sa.String(SHORT), nullable=True),
        sa.Column("start_date", sa.Date(), nullable=True),
        sa.Column("due_date", sa.Date(), nullable=True),
        sa.Column("ledger_customer_id", sa.String(KEY), nullable=True),
        sa.CheckConstraint(
            "(fee_minor IS NULL) = (fee_currency IS NULL)", name="ck_engagements_fee_complete"
        ),
        sa.UniqueConstraint(
            "tenant_id", "source", "key", name="uq_engagements_tenant_id_source_key"
        ),
    )
    op.create_table(
        "clients",
        *_id("clients"),
        sa.Column("source", sa.String(SHORT), nullable=False),
        sa.Column("key", sa.String(KEY), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("ledger_customer_id", sa.String(KEY), nullable=True),
        sa.UniqueConstraint("tenant_id", "source", "key", name="uq_clients_tenant_id_source_key"),
    )
    op.create_table(
        "phase_events",
        *_id("phase_events"),
        sa.Column("source", sa.String(SHORT), nullable=False),
        sa.Column("work_item", sa.String(KEY), nullable=False),
        sa.Column("phase_key", sa.String(2 * KEY), nullable=False),
        sa.Column("completion", sa.String(KEY), nullable=False),
        _enum("kind"),
        sa.Column("phase", sa.Text(), nullable=False),
        sa.Column("secondary", sa.Text(), nullable=True),
        _utc("completed_at"),
        sa.Column("reopened", sa.Boolean(), nullable=False),
        _enum("status"),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.UniqueConstraint(
            "tenant_id",
            "source",
            "work_item",
            "phase_key",
            "completion",
            name="uq_phase_events_natural_key",
        ),
    )
    op.create_index("ix_phase_events_tenant_status", "phase_events", ["tenant_id", "status"])
    op.create_table(
        "milestones",
        *_id("milestones"),
        sa.Column("key", sa.String(KEY), nullable=False),
        sa.Column("source", sa.String(SHORT), nullable=False),
        sa.Column("work_item", sa.String(KEY), nullable=False),
        sa.Column("client_key", sa.String(KEY), nullable=False),
        sa.Column("plan_id", sa.String(KEY), nullable=False),
        sa.Column("definition_id", sa.String(KEY), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        _enum("collection_mode"),
        sa.Column("config_revision", sa.String(KEY), nullable=False),
        _enum("state"),
        sa.Column("period", sa.String(SHORT), nullable=True),
        sa.Column("planned_date", sa.Date(), nullable=True),
        _utc("triggered_at", nullable=True),
        sa.Column("ledger_customer_id", sa.String(KEY), nullable=True),
        sa.Column("item", sa.Text(), nullable=True),
        sa.Column("tax_code", sa.String(KEY), nullable=True),
        sa.Column("terms", sa.Text(), nullable=True),
        sa.Column("send_invoice", sa.Boolean(), nullable=False),
        sa.Column("invoice_id", sa.String(KEY), nullable=True),
        sa.Column("invoice_number", sa.String(KEY), nullable=True),
        sa.Column("charge_id", sa.String(KEY), nullable=True),
        sa.Column("charge_attempts", sa.Integer(), nullable=False),
        _utc("next_charge_at", nullable=True),
        sa.Column("ledger_payment_id", sa.String(KEY), nullable=True),
        sa.Column("attention_reason", sa.Text(), nullable=True),
        _enum("resume_state", nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.UniqueConstraint("tenant_id", "key", name="uq_milestones_tenant_id_key"),
    )
    op.create_index("ix_milestones_tenant_state", "milestones", ["tenant_id", "state"])
    op.create_index(
        "ix_milestones_tenant_work_item", "milestones", ["tenant_id", "source", "work_item"]
    )
    op.create_table(
        "operations",
        *_id("operations"),
        sa.Column("key", sa.String(KEY), nullable=False),
        _enum("kind"),
        sa.Column("subject", sa.String(KEY), nullable=False),
        sa.Column("payload_hash", sa.String(128), nullable=False),
        _enum("status"),
        sa.Column("external_id", sa.String(KEY), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        _utc("created_at"),
        _utc("updated_at"),
        sa.UniqueConstraint("tenant_id", "key", name="uq_operations_tenant_id_key"),
    )
    op.create_index("ix_operations_tenant_status", "operations", ["tenant_id", "status"])
    op.create_index("ix_operations_tenant_subject", "operations", ["tenant_id", "subject"])
    op.create_table(
        "audit_events",
        *_id("audit_events"),
        _utc("at"),
        sa.Column("kind", sa.String(SHORT), nullable=False),
        sa.Column("subject", sa.String(KEY), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    op.create_index("ix_audit_events_tenant_at", "audit_events", ["tenant_id", "at"])
    op.create_index("ix_audit_events_tenant_subject", "audit_events", ["tenant_id", "subject"])
    op.create_table(
        "oauth_tokens",
        *_id("oauth_tokens"),
        sa.Column("connection", sa.String(SHORT), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        _utc("updated_at"),
        sa.UniqueConstraint("tenant_id", "connection", name="uq_oauth_tokens_tenant_id_connection"),
    )


def downgrade() -> None:
    for table in (
        "oauth_tokens",
        "audit_events",
        "operations",
        "milestones",
        "phase_events",
        "clients",
        "engagements",
        "source_cursors",
        "tenants",
    ):
        op.drop_table(table)  # drops the table's indexes and constraints with it
