"""A period of screening read from the results database, as a drift ``Sample``.

The films with a verdict are the ``results`` rows finished in the period (one per image
content and model, so a film sent twice counts once); the films the gate refused are the
distinct contents of the period's ``out_of_scope`` audit rows. Only reads.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, distinct, func, select

from worker.db.engine import reader
from worker.db.errors import database_errors
from worker.db.schema import audit_events, results
from worker.drift.sample import Sample


def read_sample(engine: Engine, start: datetime | None, end: datetime, label: str) -> Sample:
    """The figures of the films handled from ``start`` (None: the beginning) until ``end``."""
    r, a = results.c, audit_events.c
    in_r = [r.finished_at < end] + ([r.finished_at >= start] if start is not None else [])
    in_a = [a.at < end, a.outcome == "out_of_scope"] + ([a.at >= start] if start is not None else [])
    with database_errors(), reader(engine).connect() as conn:
        films = conn.execute(
            select(r.positive_probability, r.positive, r.image_format, r.width, r.height).where(*in_r)
        ).all()
        refused = conn.execute(select(func.count(distinct(a.content_sha256))).where(*in_a)).scalar_one()
        models = conn.execute(
            select(r.model_name, r.model_version, r.model_sha256)
            .where(*in_r)
            .group_by(r.model_name, r.model_version, r.model_sha256)
            .order_by(func.max(r.finished_at).desc())
        ).all()
    return Sample.of_films(
        label,
        ((float(p), bool(pos), fmt, w, h) for p, pos, fmt, w, h in films),
        refused=refused,
        models=[tuple(row) for row in models],
    )
