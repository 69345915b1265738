"""The results database: every screening result and every file handled, queryable with plain SQL.

- ``schema``: the tables (SQLAlchemy models); ``migrations/`` builds them.
- ``engine``: SQLite (WAL, ``BEGIN IMMEDIATE``) or PostgreSQL (psycopg 3, pooled).
- ``store``: ``Store.record_batch`` commits results with their audit rows (and a scan's
  ``scanned_files`` rows); ``known_results``; ``scan_index``.
- ``errors``: which database failures are transient.
- ``migrate``: Alembic from code; ``require_head``.
- ``report`` and ``render``: the summaries behind ``xray-worker report``.
"""
