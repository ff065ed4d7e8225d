"""Engines, sessions and migrations.

SQLite under GVMGEN_HOME (WAL mode) is the embedded default and is migrated on first use;
PostgreSQL (or any SQLAlchemy URL) comes from GVMGEN_DATABASE_URL and is migrated with
`gvmgen db upgrade`, so that a fleet of workers never races to change a shared schema.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gvmgen.home import home

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def database_url() -> str:
    return os.environ.get("GVMGEN_DATABASE_URL") or f"sqlite:///{home() / 'gvmgen.db'}"


def make_engine(url: str | None = None) -> Engine:
    """An engine for `url`; ValueError, naming it, for a URL that no installed driver can open and for
    an SQLite file whose folder does not exist (SQLite itself says only "unable to open database file")."""
    url = url or database_url()
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"{_named(url, _hidden(url))} is not a database URL "
                         "(dialect+driver://user:password@host/database)") from None
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        _check_sqlite_folder(url, parsed.database)
    try:
        engine = create_engine(url, **({"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}))
    except NoSuchModuleError:
        raise ValueError(f"{_named(url, _hidden(url))} is not a database URL gvmgen can use "
                         f"(no driver for {parsed.drivername!r})") from None
    except ImportError as e:  # a dialect SQLAlchemy knows, whose DBAPI module is not installed
        raise ValueError(f"{_named(url, _hidden(url))} is not a database URL gvmgen can use "
                         f"(the driver of {parsed.drivername!r} is not installed: {e})") from None
    if sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")     # readers never wait for the writer
            cur.execute("PRAGMA busy_timeout=60000")   # writers queue instead of failing
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def _hidden(url: str) -> str:
    """The URL without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # unparsable, so SQLAlchemy cannot hide it: whatever lies between `user:` and `@` goes
        return re.sub(r"(//[^/:@]*):[^@]*@", r"\1:***@", url)


def _named(url: str, what: str) -> str:
    """`what` (the URL, or the file it names) as an error says it: after the variable it came from."""
    return f"GVMGEN_DATABASE_URL: {what}" if url == os.environ.get("GVMGEN_DATABASE_URL") else what


def _check_sqlite_folder(url: str, database: str | None) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return  # in memory, or an SQLite URI filename: SQLite's own checks are all there are
    if not Path(database).absolute().parent.is_dir():
        raise ValueError(f"{_named(url, database)}: its folder does not exist")


def _sqlite_trouble(url: str, error: OperationalError) -> str:
    """What went wrong with an SQLite file, the file named: a folder that refuses a new file, found by
    trying (os.access says yes to root even where the filesystem says no), or else SQLite's own words."""
    database = make_url(url).database or ":memory:"
    if database != ":memory:" and not Path(database).exists():
        try:
            tempfile.TemporaryFile(dir=Path(database).absolute().parent).close()
        except OSError as e:
            return f"{_named(url, database)}: its folder is not writable ({e.strerror})"
    return f"{_named(url, database)}: SQLite cannot open it ({str(error.orig).strip()})"


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
    if not url.startswith("sqlite"):
        try:  # a server's first contact, so that a refusal names the URL; the pool keeps the connection
            engine.connect().close()
        except DBAPIError as e:
            cause = str(e.orig or e).strip().splitlines()[0]
            raise ConnectionError(f"{_named(url, _hidden(url))}: the database is unreachable or refused: "
                                  f"{cause}") from None
        current, needed = _revisions(engine, url)
        if current != needed:  # else the first query of a column added since fails, mid-run
            known = _known_revisions(url)
            action = "run `gvmgen db upgrade` (once, from one machine)" if current <= known else \
                "a newer gvmgen migrated it: upgrade this one"
            raise ValueError(f"{_named(url, _hidden(url))}: its schema is at revision "
                             f"{', '.join(sorted(current)) or 'none'}, this gvmgen needs {', '.join(sorted(needed))}: "
                             f"{action}")
    else:
        try:
            migrated = _at_head(engine, url)
        except OperationalError as e:  # SQLite names no file ("unable to open database file")
            raise ValueError(_sqlite_trouble(url, e)) from None
        if not migrated:
            with first_use_lock("database"):
                if not _at_head(engine, url):
                    upgrade(url)
    return sessionmaker(engine, expire_on_commit=False)


def _revisions(engine: Engine, url: str) -> tuple[set[str], set[str]]:
    """The database's schema revisions, and those of this gvmgen's migrations (their heads)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    return current, set(ScriptDirectory.from_config(alembic_config(url)).get_heads())


def _known_revisions(url: str) -> set[str]:
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory.from_config(alembic_config(url)).walk_revisions()}


def _at_head(engine: Engine, url: str) -> bool:
    current, needed = _revisions(engine, url)
    return current == needed
