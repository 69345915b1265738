"""The PACS outbox: one row per DICOM object to deliver to one destination.

A result's objects (a structured report, a key image) are queued in the transaction that
stores it; ``xray-worker send`` delivers them and records how each delivery went. The
object's DICOM Part 10 bytes are kept in the row, so a delivery never depends on a file
that may have moved. Unique per (SOP Instance UID, destination): queueing again is a no-op.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("result_id", ROW_ID, nullable=True),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC_TIME, nullable=False),
        sa.Column("last_attempt_at", UTC_TIME, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", UTC_TIME, nullable=True),
        sa.Column("committed_at", UTC_TIME, nullable=True),
        sa.Column("commitment_transaction_uid", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name=op.f("fk_outbox_result_id_results")),
        sa.UniqueConstraint(
            "sop_instance_uid", "destination", name=op.f("uq_outbox_sop_instance_uid_destination")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'committed', 'failed')", name=op.f("ck_outbox_status")
        ),
        sa.CheckConstraint(
            "status <> 'failed' OR last_error IS NOT NULL", name=op.f("ck_outbox_failed_has_error")
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_outbox_attempts")),
    )
    op.create_index(
        op.f("ix_outbox_destination_status_next_attempt_at"),
        "outbox",
        ["destination", "status", "next_attempt_at"],
    )
    op.create_index(op.f("ix_outbox_commitment_transaction_uid"), "outbox", ["commitment_transaction_uid"])
    op.create_index(op.f("ix_outbox_result_id"), "outbox", ["result_id"])


def downgrade() -> None:
    op.drop_table("outbox")
