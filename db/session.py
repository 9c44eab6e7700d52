"""Engine and sessions. Alembic migrations run on every start, so a fresh or old database is brought to head."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from routeyard.errors import Unavailable

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            # WAL lets `routeyard status` read while a job writes; foreign keys are off by default in SQLite.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


# Alembic keeps its migration context in module globals: two threads migrating at once corrupt it.
_MIGRATE_LOCK = threading.Lock()
_PG_MIGRATE_LOCK_ID = 0x526F757465  # any fixed number; serialises workers starting together on PostgreSQL


def migrate(engine: Engine) -> None:
    """Apply every Alembic migration not yet applied (idempotent, safe from many threads and processes)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with _MIGRATE_LOCK, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_MIGRATE_LOCK_ID})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str) -> sessionmaker[Session]:
    """Engine + migrations + a session factory: what every front door and worker starts with."""
    engine = make_engine(url)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)


# What a database that is down, restarting or unreachable raises (a lost or refused connection, a server
# shutting down; also a deadlock or lock timeout, which a retry gets past): the one list the API maps to 503.
DATABASE_DOWN: tuple[type[Exception], ...] = (OperationalError, InterfaceError)


def database_unavailable(exc: Exception) -> Unavailable:
    """The Unavailable to answer for one of DATABASE_DOWN. Its message names no URL, statement or parameter
    (they may hold credentials or a user's prompts)."""
    orig = getattr(exc, "orig", None) or exc
    return Unavailable(f"the database is not available right now ({type(orig).__name__}); try again in a few "
                       "seconds")
