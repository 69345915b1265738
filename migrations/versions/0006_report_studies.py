"""Studies: one row per DICOM study and model, with the study-level verdict.

A chest study may hold a PA and a lateral film (or repeats). The study is positive when any
of its screened films is. Films the gate refused (a lateral, by ViewPosition) have no result
row and do not count here; ``report_out_of_scope`` lists them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

REPORT_STUDIES = """
    SELECT r.study_instance_uid AS study_instance_uid,
           r.model_name AS model_name, r.model_version AS model_version,
           r.model_sha256 AS model_sha256,
           COUNT(*) AS films,
           SUM(CASE WHEN r.positive THEN 1 ELSE 0 END) AS positive_films,
           MAX(r.positive_probability) AS max_positive_probability,
           CASE WHEN SUM(CASE WHEN r.positive THEN 1 ELSE 0 END) > 0
                THEN 'POSITIVE' ELSE 'NEGATIVE' END AS verdict,
           MAX(r.accession_number) AS accession_number,
           MIN(r.finished_at) AS first_result_at, MAX(r.finished_at) AS last_result_at
    FROM results r
    WHERE r.study_instance_uid IS NOT NULL
    GROUP BY r.study_instance_uid, r.model_name, r.model_version, r.model_sha256
"""


def upgrade() -> None:
    op.execute(f"CREATE VIEW report_studies AS {REPORT_STUDIES.strip()}")


def downgrade() -> None:
    op.execute("DROP VIEW report_studies")
