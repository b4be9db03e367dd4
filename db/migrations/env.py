"""Alembic environment: the URL (or an open, locked connection) comes from db.migrate.upgrade."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from db.models import Base
from db.session import make_engine

config = context.config


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


given = config.attributes.get("connection")
if given is not None:
    run(given)
    given.commit()
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: run migrations through `fracture db upgrade`")
    engine = make_engine(url)
    with engine.connect() as connection:
        run(connection)
        connection.commit()
    engine.dispose()
