"""Bundles the servers have activated, and which revision is active / shadow (shared by replicas).

- `bundles`: one row per revision ever stored, with the bundle file itself (manifest, sources and
  signature, a few KB), so any replica can load a revision it never saw on its own disk.
- `bundle_activations`: an append-only history of pointer moves per role (`active`, `shadow`).
  The newest row of a role IS the pointer: replicas poll it (an indexed one-row read) and switch
  when it names another revision. Appending instead of updating one row keeps the history for
  `decider bundle list` and gives `rollback` its target for free.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError

from decider.store.db import metadata

__all__ = ["bundles", "bundle_activations", "BundleStore", "StoredBundle", "Activation", "AmbiguousRevision",
           "ACTIVE", "SHADOW"]

ACTIVE, SHADOW = "active", "shadow"

bundles = Table(
    "bundles",
    metadata,
    Column("revision", String(64), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("version", String(256), nullable=False),
    Column("source", Text, nullable=False, default=""),        # the file or folder it was first loaded from
    Column("signed", Boolean, nullable=False, default=False),
    Column("archive", LargeBinary, nullable=False),            # the .bundle file (tar.gz)
    Column("loaded_at", DateTime(timezone=True), nullable=False),   # BundleInfo.loaded_at: first stored
)

bundle_activations = Table(
    "bundle_activations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("role", String(8), nullable=False),                 # active | shadow
    Column("revision", String(64)),                            # NULL: shadow cleared
    Column("action", String(16), nullable=False),              # load | activate | rollback | shadow
    Column("instance", String(256), nullable=False, default=""),
    Column("activated_at", DateTime(timezone=True), nullable=False),
    Index("ix_bundle_activations_role_id", "role", "id"),
)


class AmbiguousRevision(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class StoredBundle:
    revision: str
    name: str
    version: str
    source: str
    signed: bool
    loaded_at: datetime


@dataclass(frozen=True, slots=True)
class Activation:
    id: int
    role: str
    revision: str | None
    action: str
    instance: str
    activated_at: datetime


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _stored(row: Any) -> StoredBundle:
    return StoredBundle(row.revision, row.name, row.version, row.source, bool(row.signed), _utc(row.loaded_at))


def _activation(row: Any) -> Activation:
    return Activation(row.id, row.role, row.revision, row.action, row.instance, _utc(row.activated_at))


class BundleStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def put(self, revision: str, name: str, version: str, source: str, signed: bool, archive: bytes) -> bool:
        """Store a bundle unless its revision is already there; True when it was new. A signed file
        replaces an unsigned copy of the same revision (same sources, now vouched for)."""
        now = datetime.now(timezone.utc)
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(bundles).values(revision=revision, name=name, version=version, source=source,
                                                    signed=signed, archive=archive, loaded_at=now))
            return True
        except IntegrityError:
            if signed:
                with self.engine.begin() as conn:
                    conn.execute(bundles.update().where(bundles.c.revision == revision, bundles.c.signed.is_(False))
                                 .values(signed=True, archive=archive, source=source))
            return False

    def has(self, revision: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(bundles.c.revision).where(bundles.c.revision == revision)).first() is not None

    def resolve(self, prefix: str) -> str | None:
        """The full revision for a unique prefix; None when none matches."""
        with self.engine.connect() as conn:
            found = list(conn.execute(select(bundles.c.revision).where(bundles.c.revision.startswith(prefix))
                                      .limit(2)).scalars())
        if len(found) > 1:
            raise AmbiguousRevision(f"revision prefix {prefix!r} matches more than one bundle")
        return found[0] if found else None

    def archive(self, revision: str) -> tuple[StoredBundle, bytes] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(bundles).where(bundles.c.revision == revision)).first()
        return (_stored(row), bytes(row.archive)) if row else None

    def list(self) -> list[StoredBundle]:
        cols = [c for c in bundles.c if c.name != "archive"]
        with self.engine.connect() as conn:
            return [_stored(r) for r in conn.execute(select(*cols).order_by(bundles.c.loaded_at))]

    def point(self, role: str, revision: str | None, action: str, instance: str) -> Activation:
        """Move a role's pointer (append to the history). Every replica follows within its poll."""
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            new_id = conn.execute(insert(bundle_activations).values(role=role, revision=revision, action=action,
                                                                    instance=instance, activated_at=now)).inserted_primary_key
        return Activation(int(new_id[0]), role, revision, action, instance, now)

    def pointers(self) -> dict[str, Activation]:
        """The newest activation per role: what every replica should be serving."""
        newest = (select(bundle_activations.c.role, func.max(bundle_activations.c.id).label("id"))
                  .group_by(bundle_activations.c.role).subquery())
        q = select(bundle_activations).join(newest, bundle_activations.c.id == newest.c.id)
        with self.engine.connect() as conn:
            return {r.role: _activation(r) for r in conn.execute(q)}

    def history(self, role: str = ACTIVE, limit: int = 100) -> list[Activation]:
        """Newest first."""
        q = (select(bundle_activations).where(bundle_activations.c.role == role)
             .order_by(bundle_activations.c.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [_activation(r) for r in conn.execute(q)]

    def rollback_target(self) -> str | None:
        """The revision that was active before the current one (like `kubectl rollout undo`: two
        rollbacks in a row go back and forth). None when there is nothing to go back to."""
        hist = self.history(ACTIVE, limit=1000)
        if not hist:
            return None
        current = hist[0].revision
        for act in hist[1:]:
            if act.revision and act.revision != current:
                return act.revision
        return None
