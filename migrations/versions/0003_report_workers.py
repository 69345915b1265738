"""The work per worker: a reporting view of the audit trail by UTC day and worker.

Revision ID: 0003
Revises: 0002
Create Date: 2025-12-09
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The UTC day of an audit row: SQLite stores UTC text, Postgres timestamptz (as in 0001).
DAY = {"sqlite": "date(a.at)", "postgresql": "((a.at) AT TIME ZONE 'UTC')::date"}

# Files each worker handled per UTC day, by outcome, with its first and last file.
REPORT_WORKERS = """
    SELECT {day} AS day, a.worker_host AS worker_host, a.worker_id AS worker_id,
           COUNT(*) AS files,
           SUM(CASE WHEN a.outcome = 'screened' THEN 1 ELSE 0 END) AS screened,
           SUM(CASE WHEN a.outcome = 'duplicate' THEN 1 ELSE 0 END) AS duplicates,
           SUM(CASE WHEN a.outcome = 'failed' THEN 1 ELSE 0 END) AS failed,
           MIN(a.at) AS first_at, MAX(a.at) AS last_at
    FROM audit_events a
    GROUP BY {day}, a.worker_host, a.worker_id
"""


def upgrade() -> None:
    sql = REPORT_WORKERS.format(day=DAY[op.get_bind().dialect.name])
    op.execute(f"CREATE VIEW report_workers AS {sql.strip()}")


def downgrade() -> None:
    op.execute("DROP VIEW report_workers")
