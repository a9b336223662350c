"""Alembic migrations of decider's schema, shipped inside the package.

`decider.store.migrate` drives them programmatically (no alembic.ini): `decider db upgrade --db URL`.
`env.py` runs on the connection it is handed, so the upgrade happens inside the caller's
transaction and under its lock.
"""
