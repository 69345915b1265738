"""The archive scan's index: each file a model has handled, with its size and modification time.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "scanned_files",
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("result_id", ROW_ID, nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("path", "model_sha256", name="pk_scanned_files"),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name="fk_scanned_files_result_id_results"),
        sa.CheckConstraint("outcome IN ('screened', 'duplicate', 'failed')", name="ck_scanned_files_outcome"),
    )


def downgrade() -> None:
    op.drop_table("scanned_files")
