"""Raw file names: the bytes of a path that is not valid UTF-8, in hex, beside its text.

A share can hold any name (any bytes but '/' and NUL). The path columns are text, so a
name that is not valid UTF-8 is stored there with each undecodable byte written as
``\\xNN`` (``worker/names.py``), and its exact bytes in the new ``*_hex`` column; for every
other name the hex column is NULL (in the skip index: empty) and the text is the name itself.
Two names can read the same as text (a literal ``\\xe9`` and a byte 0xE9), so the skip
index's key takes the hex too: each file keeps a row of its own.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("source_path_hex", sa.Text(), nullable=True))
    op.add_column("audit_events", sa.Column("destination_path_hex", sa.Text(), nullable=True))
    # No view reads scanned_files, so SQLite may rebuild it (a new primary key needs that there).
    with op.batch_alter_table("scanned_files") as batch:
        batch.add_column(sa.Column("path_hex", sa.Text(), nullable=False, server_default=""))
        batch.drop_constraint("pk_scanned_files", type_="primary")
        batch.create_primary_key("pk_scanned_files", ["path", "model_sha256", "path_hex"])


def downgrade() -> None:
    # Rows that differ only in path_hex would collide under the old key: keep one of each.
    op.execute(
        "DELETE FROM scanned_files WHERE path_hex <> '' AND EXISTS (SELECT 1 FROM scanned_files o "
        "WHERE o.path = scanned_files.path AND o.model_sha256 = scanned_files.model_sha256 "
        "AND o.path_hex < scanned_files.path_hex)"
    )
    with op.batch_alter_table("scanned_files") as batch:
        batch.drop_constraint("pk_scanned_files", type_="primary")
        batch.create_primary_key("pk_scanned_files", ["path", "model_sha256"])
        batch.drop_column("path_hex")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch rebuild of audit_events
    # would break the reporting views that read it.
    op.execute("ALTER TABLE audit_events DROP COLUMN destination_path_hex")
    op.execute("ALTER TABLE audit_events DROP COLUMN source_path_hex")
