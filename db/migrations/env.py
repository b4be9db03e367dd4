"""Alembic environment: the URL comes from the caller's settings (db.migrate.upgrade)."""

from __future__ import annotations

from alembic import context

from db.models import Base
from db.session import make_engine

config = context.config
url = config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("no database URL: run migrations through `fracture db upgrade`")

engine = make_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
