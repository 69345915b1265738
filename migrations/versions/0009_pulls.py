"""Pulls from PACS: ``pull_runs`` (what each run asked for, its high-water mark) and
``pull_instances`` (per PACS and SOP Instance UID: found, retrieved, known or failed, with its
claim).

``xray-worker pull`` records what a query found before it retrieves anything, and each
instance's retrieval as it answers, so a rerun, or a restart after SIGKILL, pulls nothing twice
and misses nothing. Unique per (source, SOP Instance UID): found again, the same row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pull_runs",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("started_at", UTC_TIME, nullable=False),
        sa.Column("first_date", sa.Date(), nullable=True),
        sa.Column("last_date", sa.Date(), nullable=True),
        sa.Column("queried_at", UTC_TIME, nullable=True),
        sa.Column("finished_at", UTC_TIME, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("found", sa.Integer(), nullable=False),
        sa.Column("retrieved", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pull_runs")),
        sa.CheckConstraint("status IN ('running', 'done', 'failed')", name=op.f("ck_pull_runs_status")),
        sa.CheckConstraint(
            "status <> 'failed' OR reason IS NOT NULL", name=op.f("ck_pull_runs_failed_has_reason")
        ),
    )
    op.create_index(op.f("ix_pull_runs_source_queried_at"), "pull_runs", ["source", "queried_at"])
    op.create_table(
        "pull_instances",
        sa.Column("id", ROW_ID, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("run_id", ROW_ID, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("found_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.Column("retrieved_at", UTC_TIME, nullable=True),
        sa.Column("claimed_by", sa.String(200), nullable=True),
        sa.Column("claimed_until", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pull_instances")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["pull_runs.id"], name=op.f("fk_pull_instances_run_id_pull_runs")
        ),
        sa.UniqueConstraint(
            "source", "sop_instance_uid", name=op.f("uq_pull_instances_source_sop_instance_uid")
        ),
        sa.CheckConstraint(
            "state IN ('found', 'retrieved', 'known', 'failed')", name=op.f("ck_pull_instances_state")
        ),
        sa.CheckConstraint(
            "state <> 'failed' OR reason IS NOT NULL", name=op.f("ck_pull_instances_failed_has_reason")
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_pull_instances_attempts")),
    )
    op.create_index(
        op.f("ix_pull_instances_source_state_claimed_until"),
        "pull_instances",
        ["source", "state", "claimed_until"],
    )
    op.create_index(op.f("ix_pull_instances_run_id"), "pull_instances", ["run_id"])


def downgrade() -> None:
    op.drop_table("pull_instances")
    op.drop_table("pull_runs")
