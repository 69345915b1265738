"""Results, the audit trail, and the reporting views.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC_TIME = sa.DateTime(timezone=True)

# Bucketing times by UTC day and hour: SQLite stores UTC text, Postgres timestamptz.
BUCKETS = {
    "sqlite": {"day": "date({col})", "hour": "strftime('%Y-%m-%d %H:00', {col})"},
    "postgresql": {
        "day": "(({col}) AT TIME ZONE 'UTC')::date",
        "hour": "date_trunc('hour', ({col}) AT TIME ZONE 'UTC')",
    },
}

VIEWS = {
    # Files handled per UTC day, by outcome and (for screened and duplicate files) label.
    "report_daily_counts": """
        SELECT {day_at} AS day, a.outcome AS outcome, r.label AS label, COUNT(*) AS files
        FROM audit_events a LEFT JOIN results r ON r.id = a.result_id
        GROUP BY {day_at}, a.outcome, r.label
    """,
    # Every file whose content was flagged positive, with where it was found and where it went.
    "report_flagged": """
        SELECT r.id AS result_id, a.at AS handled_at, r.finished_at AS finished_at,
               r.positive_probability AS positive_probability, r.threshold AS threshold,
               r.label AS label, r.model_name AS model_name, r.model_version AS model_version,
               r.modality AS modality, r.study_instance_uid AS study_instance_uid,
               r.series_instance_uid AS series_instance_uid, r.sop_instance_uid AS sop_instance_uid,
               r.accession_number AS accession_number, a.source_path AS source_path,
               a.destination_path AS destination_path, r.content_sha256 AS content_sha256
        FROM results r LEFT JOIN audit_events a ON a.result_id = r.id
        WHERE r.positive
    """,
    # Failed files per UTC day and reason.
    "report_failures": """
        SELECT {day_at} AS day, a.reason AS reason, COUNT(*) AS files,
               MIN(a.at) AS first_at, MAX(a.at) AS last_at
        FROM audit_events a
        WHERE a.outcome = 'failed'
        GROUP BY {day_at}, a.reason
    """,
    # Files handled per UTC hour, and the model's mean time per image for those screened.
    "report_hourly_throughput": """
        SELECT {hour_at} AS hour, COUNT(*) AS files,
               SUM(CASE WHEN a.outcome = 'screened' THEN 1 ELSE 0 END) AS screened,
               SUM(CASE WHEN a.outcome = 'duplicate' THEN 1 ELSE 0 END) AS duplicates,
               SUM(CASE WHEN a.outcome = 'failed' THEN 1 ELSE 0 END) AS failed,
               AVG(CASE WHEN a.outcome = 'screened' THEN r.inference_ms END) AS mean_inference_ms
        FROM audit_events a LEFT JOIN results r ON r.id = a.result_id
        GROUP BY {hour_at}
    """,
    # Results per model file, with its name and version.
    "report_models": """
        SELECT r.model_name AS model_name, r.model_version AS model_version,
               r.model_sha256 AS model_sha256, COUNT(*) AS results,
               SUM(CASE WHEN r.positive THEN 1 ELSE 0 END) AS positives,
               MIN(r.finished_at) AS first_result_at, MAX(r.finished_at) AS last_result_at
        FROM results r
        GROUP BY r.model_name, r.model_version, r.model_sha256
    """,
}


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("preprocessing", sa.String(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("positive_class", sa.String(), nullable=False),
        sa.Column("positive", sa.Boolean(), nullable=False),
        sa.Column("positive_probability", sa.Double(), nullable=False),
        sa.Column("probabilities", JSON, nullable=False),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("device", sa.String(), nullable=False),
        sa.Column("queued_at", UTC_TIME, nullable=True),
        sa.Column("started_at", UTC_TIME, nullable=False),
        sa.Column("finished_at", UTC_TIME, nullable=False),
        sa.Column("inference_ms", sa.Double(), nullable=False),
        sa.Column("image_format", sa.String(16), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(), nullable=True),
        sa.Column("study_instance_uid", sa.String(), nullable=True),
        sa.Column("series_instance_uid", sa.String(), nullable=True),
        sa.Column("modality", sa.String(), nullable=True),
        sa.Column("accession_number", sa.String(), nullable=True),
        sa.Column("patient_id", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_results"),
        sa.UniqueConstraint("content_sha256", "model_sha256", name="uq_results_content_sha256_model_sha256"),
        sa.CheckConstraint(
            "length(content_sha256) = 64 AND length(model_sha256) = 64", name="ck_results_sha256"
        ),
        sa.CheckConstraint("width > 0 AND height > 0", name="ck_results_size"),
    )
    op.create_index("ix_results_finished_at", "results", ["finished_at"])
    op.create_index("ix_results_positive_finished_at", "results", ["positive", "finished_at"])
    op.create_index("ix_results_study_instance_uid", "results", ["study_instance_uid"])

    op.create_table(
        "audit_events",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("file_size", sa.BigInteger(), nullable=True),
        sa.Column("content_sha256", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("destination_path", sa.Text(), nullable=True),
        sa.Column("worker_host", sa.String(), nullable=False),
        sa.Column("worker_id", sa.String(), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=True),
        sa.Column("result_id", ROW_ID, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
        sa.UniqueConstraint("event_id", name="uq_audit_events_event_id"),
        sa.ForeignKeyConstraint(["result_id"], ["results.id"], name="fk_audit_events_result_id_results"),
        sa.CheckConstraint("outcome IN ('screened', 'duplicate', 'failed')", name="ck_audit_events_outcome"),
        sa.CheckConstraint(
            "outcome <> 'failed' OR reason IS NOT NULL", name="ck_audit_events_failed_has_reason"
        ),
        sa.CheckConstraint(
            "outcome = 'failed' OR content_sha256 IS NOT NULL", name="ck_audit_events_screened_has_sha256"
        ),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_outcome_at", "audit_events", ["outcome", "at"])
    op.create_index("ix_audit_events_result_id", "audit_events", ["result_id"])
    op.create_index("ix_audit_events_content_sha256", "audit_events", ["content_sha256"])

    buckets = BUCKETS[op.get_bind().dialect.name]
    for name, query in VIEWS.items():
        sql = query.format(
            day_at=buckets["day"].format(col="a.at"), hour_at=buckets["hour"].format(col="a.at")
        )
        op.execute(f"CREATE VIEW {name} AS {sql.strip()}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
    op.drop_table("audit_events")
    op.drop_table("results")
