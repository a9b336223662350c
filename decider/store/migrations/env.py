"""Alembic environment: migrations run on the connection `decider.store.migrate` passes in
(`config.attributes["connection"]`), never on a URL from a config file."""

from __future__ import annotations

from alembic import context

from decider.store.migrate import target_metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("decider's migrations run through `decider db upgrade --db URL` "
                       "(decider.store.migrate), which passes the connection in")

context.configure(
    connection=connection,
    target_metadata=target_metadata(),
    # SQLite cannot ALTER most things in place; batch mode gives one migration source for both
    # databases (on PostgreSQL a batch is plain ALTER TABLE statements).
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
