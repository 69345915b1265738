"""The gate: outcome ``out_of_scope``, the image gate's score, the site profile.

- ``audit_events.outcome`` and ``scanned_files.outcome`` may be ``out_of_scope`` (a file the
  gate refused: another modality, body part or view, or an image unlike the model's training
  films), which needs a reason, like ``failed``;
- ``results.gate_score``: the image gate's score of the screened image (NULL when the model
  has no image gate), to watch a site's films drift towards the limit;
- ``results.site_profile``: the site profile (operating point chosen on a site's own films by
  ``xray-train site-check --store``) the label was given under, NULL for none;
- the view ``report_out_of_scope``: refused files per UTC day and reason.

SQLite cannot change a CHECK constraint in place: its tables are rebuilt (Alembic's batch
mode), with the views that read them dropped first and created again from their own SQL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD = "outcome IN ('screened', 'duplicate', 'failed')"
NEW = "outcome IN ('screened', 'duplicate', 'failed', 'out_of_scope')"
OLD_REASON = "outcome <> 'failed' OR reason IS NOT NULL"
NEW_REASON = "outcome NOT IN ('failed', 'out_of_scope') OR reason IS NOT NULL"
DAY = {"sqlite": "date(a.at)", "postgresql": "((a.at) AT TIME ZONE 'UTC')::date"}
REPORT_OUT_OF_SCOPE = """
    SELECT {day} AS day, a.reason AS reason, COUNT(*) AS files,
           MIN(a.at) AS first_at, MAX(a.at) AS last_at
    FROM audit_events a
    WHERE a.outcome = 'out_of_scope'
    GROUP BY {day}, a.reason
"""


# 0001 and 0002 named their CHECKs with the naming convention's prefix already in the name,
# which the convention then doubled: those are the names in every database to date. 0005
# gives the new constraints their intended names, and its downgrade restores the old ones.
DOUBLED = {
    "audit_outcome": "ck_audit_events_ck_audit_events_outcome",
    "audit_reason": "ck_audit_events_ck_audit_events_failed_has_reason",
    "scanned_outcome": "ck_scanned_files_ck_scanned_files_outcome",
}
INTENDED = {
    "audit_outcome": "ck_audit_events_outcome",
    "audit_reason": "ck_audit_events_failed_has_reason",
    "scanned_outcome": "ck_scanned_files_outcome",
}


def _checks(outcome: str, reason: str, old: dict[str, str], new: dict[str, str]) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    views: list[tuple[str, str]] = []
    if sqlite:  # a rebuilt table breaks the views that read it: keep their SQL, drop, recreate
        rows = op.get_bind().exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'view'")
        views = [(name, sql) for name, sql in rows]
        for name, _ in views:
            op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table("audit_events", recreate="always" if sqlite else "auto") as batch:
        batch.drop_constraint(op.f(old["audit_outcome"]), type_="check")
        batch.create_check_constraint(op.f(new["audit_outcome"]), outcome)
        batch.drop_constraint(op.f(old["audit_reason"]), type_="check")
        batch.create_check_constraint(op.f(new["audit_reason"]), reason)
    with op.batch_alter_table("scanned_files", recreate="always" if sqlite else "auto") as batch:
        batch.drop_constraint(op.f(old["scanned_outcome"]), type_="check")
        batch.create_check_constraint(op.f(new["scanned_outcome"]), outcome)
    for _, sql in views:
        op.execute(sql)


def upgrade() -> None:
    _checks(NEW, NEW_REASON, DOUBLED, INTENDED)
    op.add_column("results", sa.Column("gate_score", sa.Double(), nullable=True))
    op.add_column("results", sa.Column("site_profile", sa.String(200), nullable=True))
    sql = REPORT_OUT_OF_SCOPE.format(day=DAY[op.get_bind().dialect.name])
    op.execute(f"CREATE VIEW report_out_of_scope AS {sql.strip()}")


def downgrade() -> None:
    op.execute("DROP VIEW report_out_of_scope")
    # Plain DROP COLUMN (SQLite >= 3.35): a batch rebuild of results would break its views.
    op.execute("ALTER TABLE results DROP COLUMN site_profile")
    op.execute("ALTER TABLE results DROP COLUMN gate_score")
    # The refused files' rows cannot stay under the old constraint: they become failures.
    op.execute("UPDATE audit_events SET outcome = 'failed' WHERE outcome = 'out_of_scope'")
    op.execute("UPDATE scanned_files SET outcome = 'failed' WHERE outcome = 'out_of_scope'")
    _checks(OLD, OLD_REASON, INTENDED, DOUBLED)
