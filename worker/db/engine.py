"""Opening the results database: SQLite tuned for one writer at a time, Postgres for many.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE``: the write lock is taken up front, so two writers queue instead of
deadlocking half-way, and readers (a report) never block a writer. Postgres goes through
psycopg 3 with a pool fit for a daemon that runs for months.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError

from worker.errors import ConfigError

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# File systems where SQLite's WAL (shared memory beside the file) is unsafe or unsupported.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "fuse.sshfs"}
)
POSTGRES_POOL: dict[str, Any] = {
    "pool_pre_ping": True,  # a connection dropped by a restart or a firewall is replaced, not used
    "pool_recycle": 1800,  # seconds; stay under idle-connection killers (pgbouncer, load balancers)
    "pool_size": 4,
    "max_overflow": 4,
    "pool_timeout": 30,
}


def safe_url(url: str | URL) -> str:
    """The URL with its password masked, fit for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable database URL)"


def parse_url(url: str | URL) -> URL:
    """Check the URL names a backend this project supports; ``postgresql://`` means psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            "[database] url is not a database URL: use sqlite:///path/to/file.db "
            "or postgresql+psycopg://user@host/dbname"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise ConfigError(
            f"[database] url {safe_url(parsed)}: unsupported driver {parsed.drivername!r}; "
            "use sqlite:///FILE or postgresql+psycopg://..."
        )
    return parsed


def make_engine(url: str | URL, *, create: bool = False) -> Engine:
    """An engine for the results database; ``create`` allows a new SQLite file (``db upgrade``)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, create=create)
    return create_engine(
        parsed,
        hide_parameters=True,  # statement parameters may hold patient identifiers
        connect_args={"connect_timeout": 10, "application_name": "xray-screen"},
        **POSTGRES_POOL,
    )


def sqlite_file(url: str | URL) -> Path | None:
    """The file of a SQLite URL, resolved (it may not exist yet); None for another backend."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file:"):
        raise ConfigError(f"[database] url {parsed}: the results database must be a file (sqlite:///path.db)")
    return Path(parsed.database).expanduser().resolve()


def _sqlite_engine(url: URL, *, create: bool) -> Engine:
    path = sqlite_file(url)
    assert path is not None  # a SQLite URL
    if not path.exists():
        if not create:
            raise ConfigError(f"no database at {path}: run `xray-worker db upgrade` to create it")
        path.parent.mkdir(parents=True, exist_ok=True)
    fs = filesystem_type(path.parent)
    if fs in NETWORK_FILESYSTEMS:
        log.warning(
            "the SQLite database %s is on a network file system (%s), where WAL mode does not work "
            "and the file can be corrupted: keep it on a local disk, or use PostgreSQL",
            path,
            fs,
        )
    engine = create_engine(url.set(database=str(path)), hide_parameters=True)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN, instead of the sqlite3 module's implicit one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint; safe with WAL
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    # Readers can ask for a deferred transaction; writers take the write lock before reading.
    mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
    connection.exec_driver_sql(f"BEGIN {mode}")


def reader(engine: Engine) -> Engine:
    """The same database for read-only work (reports): no write lock taken on SQLite."""
    return engine.execution_options(sqlite_begin="DEFERRED")


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the file system holding ``path`` (Linux ``/proc/self/mounts``), if known."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text(encoding="utf-8")
        except OSError:
            return None
    best: tuple[int, str] | None = None
    target = str(path.resolve())
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) > best[0]):
            best = (len(mount_point), fields[2])
    return best[1] if best else None
