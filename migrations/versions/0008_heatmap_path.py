"""The heatmap of a result: ``results.heatmap_path``.

The path of the Grad-CAM overlay ``[explain]`` wrote for the screened image
(``<folder>/<date>/<content sha256>.png``), NULL when none was made. A plain ADD COLUMN on
both backends: SQLite adds a nullable column without rebuilding the table, so the views that
read ``results`` keep working; the downgrade drops it the same way (SQLite >= 3.35), as 0005
does.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("results", sa.Column("heatmap_path", sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE results DROP COLUMN heatmap_path")
