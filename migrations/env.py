"""Alembic environment: the schema is storage.models; the URL comes from the caller's config."""

from alembic import context

from storage.db import make_engine
from storage.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # Batch mode alters a SQLite table by copying it and dropping the old one: with foreign keys
                # on, that drop would cascade to every row that refers to it (a video's outputs, shots, jobs).
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            # batch mode lets later revisions alter tables on SQLite too
            context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
