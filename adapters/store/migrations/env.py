"""Alembic environment: run with a connection handed in by adapters.store.engine.migrate."""

from alembic import context

from airavata_prefect.adapters.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
