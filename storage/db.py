"""Engines, sessions and migrations.

SQLite under GVMGEN_HOME (WAL mode) is the embedded default and is migrated on first use;
PostgreSQL (or any SQLAlchemy URL) comes from GVMGEN_DATABASE_URL and is migrated with
`gvmgen db upgrade`, so that a fleet of workers never races to change a shared schema.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from gvmgen.home import home

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def database_url() -> str:
    return os.environ.get("GVMGEN_DATABASE_URL") or f"sqlite:///{home() / 'gvmgen.db'}"


def make_engine(url: str | None = None) -> Engine:
    url = url or database_url()
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")     # readers never wait for the writer
            cur.execute("PRAGMA busy_timeout=60000")   # writers queue instead of failing
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url or database_url()), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url or database_url()), revision)


@contextlib.contextmanager
def first_use_lock(name: str):
    """Serialises first-use set-up (creating and migrating a database, starting the embedded Prefect
    state) between processes sharing GVMGEN_HOME: the second waits, then finds the work done."""
    with open(home() / f".{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def connect(url: str | None = None) -> sessionmaker[Session]:
    """A session factory; a fresh embedded database is created and migrated on first use."""
    url = url or database_url()
    engine = make_engine(url)
    if url.startswith("sqlite") and not _at_head(engine, url):
        with first_use_lock("database"):
            if not _at_head(engine, url):
                upgrade(url)
    return sessionmaker(engine, expire_on_commit=False)


def _at_head(engine: Engine, url: str) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    return current == set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
