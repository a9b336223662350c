"""The `deployment_secrets` table: secrets of this deployment, created on first start.

Kept apart from the decision records on purpose: an export, a backup of the records or a reader
of GetDecision never sees them. Replicas sharing one database share the secret (the first one
to start creates it; the others read it), so an approval opened on one binds on every one.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Column, Engine, String, Table, insert, select
from sqlalchemy.exc import IntegrityError

from decider.store.db import metadata

__all__ = ["deployment_secrets", "binding_key", "BINDING_KEY"]

BINDING_KEY = "approval-binding-hmac"

deployment_secrets = Table(
    "deployment_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(128), nullable=False),   # hex
)


def binding_key(engine: Engine) -> bytes:
    """The HMAC key of the approval binding hash (`args_hash`): read, or created once."""
    c = deployment_secrets.c
    with engine.connect() as conn:
        found = conn.execute(select(c.value).where(c.name == BINDING_KEY)).scalar()
    if found is None:
        try:
            with engine.begin() as conn:
                conn.execute(insert(deployment_secrets).values(name=BINDING_KEY, value=secrets.token_hex(32)))
        except IntegrityError:
            pass   # another replica created it first: use theirs
        with engine.connect() as conn:
            found = conn.execute(select(c.value).where(c.name == BINDING_KEY)).scalar_one()
    return bytes.fromhex(found)
