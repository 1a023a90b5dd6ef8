"""Alembic environment: the service passes its engine's connection in ``config.attributes``."""

from alembic import context

from personalign.service.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
