"""Persistence at the edge: SQLAlchemy over SQLite (default) or PostgreSQL.

One module per table group (`decisions` now; approvals, budgets, kill switches and bundles join
later). The engine never imports this package.
"""

from decider.store.db import connect
from decider.store.decisions import DecisionStore
from decider.store.writer import GroupCommitWriter

__all__ = ["connect", "DecisionStore", "GroupCommitWriter"]
