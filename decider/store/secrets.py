"""The `deployment_secrets` table: secrets of this deployment, created on first start.

Only `decider serve --dev` keeps the args_hash key here now (issue 24 item 12): beside the hashes,
the key lets a reader of a database copy test guesses of masked arguments. Outside `--dev` the key
comes from a file or the environment (server/binding_key.py) and the stored one is deleted.
Replicas sharing one database share the stored secret (the first one to start creates it; the
others read it), so under `--dev` an approval opened on one binds on every one.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Column, Engine, String, Table, delete, insert, select
from sqlalchemy.exc import IntegrityError

from decider.store.db import metadata

__all__ = ["deployment_secrets", "binding_key", "forget_binding_key", "BINDING_KEY"]

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


def forget_binding_key(engine: Engine) -> bool:
    """Delete the key earlier releases (and `serve --dev`) kept in the database, once the server has
    one from outside it (issue 24 item 12): a copy of the database made from now on holds no key to
    test guessed arguments against. True when there was one."""
    with engine.begin() as conn:
        gone = conn.execute(delete(deployment_secrets).where(deployment_secrets.c.name == BINDING_KEY)).rowcount
    return bool(gone)
