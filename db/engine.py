"""Engines and sessions for SQLite (embedded default) and PostgreSQL (at scale)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "hpcaf_read_only"
"""Execution option of read-only sessions: on SQLite they begin ``DEFERRED`` (WAL readers
run beside the writer) instead of ``IMMEDIATE``."""


def is_sqlite(url: str) -> bool:
    """Whether the URL names a SQLite database."""
    return url.startswith("sqlite")


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine tuned for a many-writer job queue.

    SQLite runs in WAL mode with a busy timeout, and every transaction starts
    with ``BEGIN IMMEDIATE`` so a reader that later writes never hits a lock
    upgrade failure; PostgreSQL gets a pre-pinged pool.
    """
    if is_sqlite(url):
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            # One connection per process: SQLite has one writer at a time anyway, and threads
            # queueing for the pool are served in turn, where threads racing for the file
            # lock would sleep and poll in SQLite's busy handler.
            pool_size=1,
            max_overflow=0,
            pool_timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        )
        _configure_sqlite(engine)
        return engine
    # as many connections as the API has worker threads (40), so none waits for the pool
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=20, max_overflow=20)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (API replies read them)."""
    return sessionmaker(engine, expire_on_commit=False)


def make_read_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for requests that only read (authentication, an empty queue's poll).

    They share the engine's pool. On SQLite they take no write lock, so the
    polls of many idle pilots do not queue behind the claims and reports that
    write; on PostgreSQL the option changes nothing.
    """
    return sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)
