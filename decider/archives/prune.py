"""Retention (SPEC §11): decisions older than a horizon are archived, checked, and only then deleted.

One UTC day at a time, oldest first:

1. the day's prunable records are read in id order (bounded batches) into a new archive file, which
   is read back and must hold exactly those records before its manifest is written
   (archives/files.py); any failure stops the prune with nothing of that day deleted;
2. the ids *read back from the archive* are deleted, `batch` at a time, each batch one short
   transaction; a record that changed after it was read (an outcome reported, an approval
   resolved: it has a journal entry past the snapshot taken before reading) is not deleted, and is
   archived again, in its new state, by a later prune.

On a partitioned PostgreSQL database (store/partitions.py) a month partition entirely older than
the horizon, holding nothing that must stay, is not emptied row by row: its days are archived as
above (each archive read back and its manifest written), and then, in one short transaction, the
partition and its journal partition are DETACHed and DROPped, provided every row it holds was
archived and none changed or arrived since the prune began (a journal entry past the snapshot
taken before the first read). Anything else, a partition holding a pending approval or an
unsettled reservation, a change since, the lock not granted within PG_DROP_LOCK_TIMEOUT, falls
back to the bounded row deletes of step 2 for that partition. The partial month at the horizon,
the previous month (the servers keep its partition) and the DEFAULT partition are always row deletes.

Never pruned: pending approvals; approved or rejected ones until their expiry (they still bind
identical calls); decisions holding an unsettled budget reservation. Budget counters
(`budget_usage`) are never pruned here: they are one row per budget and window, not per decision.
An exporter cursor that has not sent a prunable record blocks the whole prune (CursorBehind),
unless `force`.
"""

from __future__ import annotations

import fcntl
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, delete, func, not_, or_, select, text, true
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.elements import ColumnElement

from decider.archives.files import ArchiveError, Manifest, write_day
from decider.errors import DeciderError, InvalidRequest
from decider.record.ids import first_id_at, id_time_ms
from decider.store.budgets import budget_reservations
from decider.store.decisions import decisions
from decider.store.journal import export_cursors, journal
from decider.store.partitions import Partition, is_partitioned, month_bounds, month_start, partitions

__all__ = ["Pruner", "PruneResult", "CursorBehind", "PruneBusy", "parse_retention", "DEFAULT_BATCH",
           "DEFAULT_THROTTLE"]

log = logging.getLogger("decider.retention")

DEFAULT_BATCH = 500
DEFAULT_THROTTLE = 1.0   # busy at most half the time
_RETENTION = re.compile(r"^(\d+)([hdwy])$")
_UNIT_HOURS = {"h": 1, "d": 24, "w": 24 * 7, "y": 24 * 365}
# Any constant other than the journal's: one prune at a time across replicas of one PostgreSQL.
_PG_PRUNE_LOCK_KEY = 0x6465636964657202
# A partition drop takes an ACCESS EXCLUSIVE lock on both partitioned tables for a few milliseconds;
# waiting for it longer would queue Decide's inserts behind the drop. Not granted in time: row deletes.
PG_DROP_LOCK_TIMEOUT = "1s"
c = decisions.c


class CursorBehind(DeciderError):
    """Exporters would lose records they have not sent: `cursors` maps each name to that count."""

    def __init__(self, cursors: dict[str, int]) -> None:
        self.cursors = cursors
        names = ", ".join(f"{n!r} ({k} unsent)" for n, k in sorted(cursors.items()))
        super().__init__(f"exporter cursor(s) behind the horizon: {names}; let them catch up, "
                         "or give --force to prune anyway (they will never send those records)")


@dataclass(slots=True)
class _Whole:
    """A partition to drop whole: the days of it archived so far and the ids they hold."""
    partition: Partition
    days: list[DayResult] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


class _Changed(Exception):
    """A row of a partition to drop changed or arrived after the prune began."""


class PruneBusy(DeciderError):
    """Another prune holds the lock (another replica, or `decider db prune` beside a server)."""


def parse_retention(text_: str, flag: str) -> timedelta:
    """`90d`, `12h`, `2w`, `7y` (365 days) → a timedelta; anything else is InvalidRequest naming `flag`."""
    m = _RETENTION.match(text_.strip()) if text_ else None
    if not m or int(m.group(1)) == 0:
        raise InvalidRequest(flag, f"not a retention (a positive number with h, d, w or y, e.g. 90d): {text_!r}")
    return timedelta(hours=int(m.group(1)) * _UNIT_HOURS[m.group(2)])


@dataclass(slots=True)
class DayResult:
    day: str
    rows: int                       # prunable records of the day (archived, or that would be)
    deleted: int = 0
    changed: int = 0                # archived, then changed before their delete: kept for a later prune
    archive: str | None = None


@dataclass(slots=True)
class PruneResult:
    horizon: datetime
    dry_run: bool
    days: list[DayResult] = field(default_factory=list)
    held: int = 0                   # older than the horizon but kept (open approvals, reservations)
    forced_cursors: dict[str, int] = field(default_factory=dict)
    manifests: list[Manifest] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)   # PostgreSQL partitions dropped whole

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.days)

    @property
    def deleted(self) -> int:
        return sum(d.deleted for d in self.days)

    def to_json(self) -> dict[str, Any]:
        return {"horizon": self.horizon.isoformat(), "dry_run": self.dry_run, "records": self.rows,
                "deleted": self.deleted, "held": self.held, "forced_cursors": self.forced_cursors,
                "partitions_dropped": self.dropped,
                "days": [{"day": d.day, "records": d.rows, "deleted": d.deleted, "changed": d.changed,
                          "archive": d.archive} for d in self.days]}


def prunable(horizon_id: str, now: datetime) -> ColumnElement[bool]:
    """Records before `horizon_id` that may leave the database at `now`."""
    open_reservation = (select(budget_reservations.c.decision_id)
                        .where(budget_reservations.c.decision_id == c.decision_id,
                               budget_reservations.c.state == "reserved").exists())
    return and_(
        c.decision_id < horizon_id,
        or_(c.approval_state.is_(None),
            c.approval_state.not_in(("pending", "approved", "rejected")),
            # approved / rejected bind identical calls until they expire
            and_(c.approval_state.in_(("approved", "rejected")), c.approval_expires_at.is_not(None),
                 c.approval_expires_at < now)),
        not_(open_reservation),
    )


def _day_of(decision_id: str) -> date:
    return datetime.fromtimestamp(id_time_ms(decision_id) / 1000, timezone.utc).date()


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


class Pruner:
    def __init__(self, engine: Engine, archive_dir: str | Path, fmt: str = "parquet",
                 batch: int = DEFAULT_BATCH, on_archived: Callable[[Manifest], None] | None = None,
                 throttle: float = DEFAULT_THROTTLE) -> None:
        """`on_archived` is told of each archive once it is complete, before its records are deleted.
        `throttle`: after each batch (read or delete) pause that many times the batch's own time, so
        a prune beside a serving server leaves it the CPU and the write lock most of the time."""
        if batch < 1:
            raise InvalidRequest("--batch", "must be at least 1")
        if throttle < 0:
            raise InvalidRequest("--throttle", "must be 0 or more")
        self.throttle = throttle
        self.on_archived = on_archived
        self.engine = engine
        self.archive_dir = Path(archive_dir)
        self.fmt = fmt
        self.batch = batch

    def run(self, horizon: datetime, *, dry_run: bool = False, force: bool = False,
            now: datetime | None = None) -> PruneResult:
        """Archive and delete every prunable record older than `horizon` (see the module's doc).
        Raises CursorBehind (unless `force`), PruneBusy, or the archive's error (nothing of the
        failing day deleted)."""
        now = now or datetime.now(timezone.utc)
        if horizon > now:
            raise InvalidRequest("--older-than", "the horizon is in the future")
        result = PruneResult(horizon=horizon, dry_run=dry_run)
        horizon_id = first_id_at(_ms(horizon))
        behind = self.cursors_behind(horizon_id, now)
        if behind and not force:
            raise CursorBehind(behind)
        result.forced_cursors = behind
        with self._exclusive(dry_run):
            result.held = self._count(and_(c.decision_id < horizon_id, not_(prunable(horizon_id, now))))
            # Before the first read: a row of a whole partition with a journal entry past this changed
            # (or arrived) after it was archived, and the partition is not dropped.
            run_snapshot = self._last_seq()
            whole = {p: _Whole(p) for p in self._droppable(horizon_id, now)}
            if dry_run:   # what a prune now would drop (unless a record of it changes meanwhile)
                result.dropped = [p.name for p in whole]
                whole = {}
            lo = ""
            while True:
                where = and_(prunable(horizon_id, now), c.decision_id >= lo)
                with self.engine.connect() as conn:
                    first = conn.execute(select(func.min(c.decision_id)).where(where)).scalar()
                if first is None:
                    break
                day = _day_of(first)
                next_day = datetime.combine(day + timedelta(days=1), datetime.min.time(), timezone.utc)
                hi = min(first_id_at(_ms(next_day)), horizon_id)
                part = next((w for p, w in whole.items() if (p.lo is None or p.lo <= first) and hi <= p.hi), None)
                if dry_run:
                    result.days.append(DayResult(day.isoformat(), self._count(and_(where, c.decision_id < hi))))
                elif part is not None:   # archived now, dropped with its partition below
                    day_result, ids = self._archive(day, first, hi, horizon_id, now, result)
                    result.days.append(day_result)
                    part.days.append(day_result)
                    part.ids.extend(ids)
                else:
                    result.days.append(self._archive_and_delete(day, first, hi, horizon_id, now, result))
                lo = hi
            for w in whole.values():
                if self._drop(w, run_snapshot):
                    result.dropped.append(w.partition.name)
                    for d in w.days:
                        d.deleted = d.rows
                    continue
                for d in w.days:   # fall back: the archived rows, deleted as any others
                    d.deleted = 0
                for i in range(0, len(w.ids), self.batch):
                    started = time.perf_counter()
                    n = self._delete(w.ids[i:i + self.batch], run_snapshot, horizon_id, now)
                    self._pause(started)
                    for d in w.days:   # attribute to days for the report: in id order, days are too
                        if d.rows > d.deleted:
                            take = min(n, d.rows - d.deleted)
                            d.deleted += take
                            n -= take
                for d in w.days:
                    d.changed = d.rows - d.deleted
        return result

    def _droppable(self, horizon_id: str, now: datetime) -> list[Partition]:
        """PostgreSQL: the month partitions of `decisions` entirely before the horizon that hold
        nothing that must stay (pending approvals, unsettled reservations: those are row deletes)."""
        if self.engine.dialect.name != "postgresql":
            return []
        out = []
        # Never the previous month's: the servers make it again within the hour (it takes a
        # replica's late rows at a month's start), and a drop would only churn.
        kept_from = month_bounds(month_start(now.year, now.month - 1).date())[1]
        with self.engine.connect() as conn:
            if not is_partitioned(conn):
                return []
            for p in partitions(conn, "decisions"):
                if p.default or p.hi is None or p.hi > horizon_id or p.hi > kept_from:
                    continue
                in_it = and_(c.decision_id < p.hi, c.decision_id >= p.lo if p.lo is not None else true())
                if not conn.execute(select(func.count()).select_from(decisions)
                                    .where(in_it, not_(prunable(horizon_id, now)))).scalar():
                    out.append(p)
        return out

    def _drop(self, w: _Whole, snapshot: int) -> bool:
        """DETACH and DROP `w`'s partition and its journal partition when every row of it was archived
        and none changed since `snapshot`; False (nothing done) otherwise."""
        p = w.partition
        in_it = and_(c.decision_id < p.hi, c.decision_id >= p.lo if p.lo is not None else true())
        jpart = "decision_journal" + p.name[len("decisions"):]
        with self.engine.connect() as conn:
            rows = int(conn.execute(select(func.count()).select_from(decisions).where(in_it)).scalar() or 0)
            journal_parts = {j.name: j for j in partitions(conn, "decision_journal")}
        j = journal_parts.get(jpart)
        if rows != len(w.ids) or j is None or (j.lo, j.hi) != (p.lo, p.hi):
            log.info("partition kept: row deletes instead", extra={"partition": p.name, "rows": rows,
                                                                   "archived": len(w.ids)})
            return False
        jin = and_(journal.c.decision_id < p.hi,
                   journal.c.decision_id >= p.lo if p.lo is not None else true())
        try:
            with self.engine.begin() as conn:
                conn.execute(text(f"SET LOCAL lock_timeout = '{PG_DROP_LOCK_TIMEOUT}'"))
                # From here to the commit no row of `decisions` changes: the detach holds its lock.
                conn.execute(text(f"ALTER TABLE decisions DETACH PARTITION {p.name}"))
                if conn.execute(select(journal.c.seq).where(journal.c.seq > snapshot, jin).limit(1)).first():
                    raise _Changed(p.name)
                conn.execute(text(f"ALTER TABLE decision_journal DETACH PARTITION {jpart}"))
                conn.execute(text(f"DROP TABLE {p.name}"))
                conn.execute(text(f"DROP TABLE {jpart}"))
                r = budget_reservations.c.decision_id
                conn.execute(delete(budget_reservations).where(
                    r < p.hi, r >= p.lo if p.lo is not None else true()))
        except (_Changed, OperationalError) as e:
            log.info("partition kept: row deletes instead", extra={"partition": p.name, "reason": str(e)})
            return False
        log.info("partition dropped", extra={"partition": p.name, "journal_partition": jpart, "records": rows})
        return True

    def cursors_behind(self, horizon_id: str, now: datetime) -> dict[str, int]:
        """Each exporter cursor with journal entries of prunable records after it: how many."""
        out: dict[str, int] = {}
        with self.engine.connect() as conn:
            cursors = conn.execute(select(export_cursors.c.name, export_cursors.c.seq)).all()
            for name, seq in cursors:
                n = conn.execute(select(func.count()).select_from(
                    journal.join(decisions, decisions.c.decision_id == journal.c.decision_id))
                    .where(journal.c.seq > seq, prunable(horizon_id, now))).scalar() or 0
                if n:
                    out[name] = int(n)
        return out

    def _count(self, where: ColumnElement[bool]) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(decisions).where(where)).scalar() or 0)

    def _rows(self, lo: str, hi: str, horizon_id: str, now: datetime) -> Iterator[list[dict[str, Any]]]:
        """The day's prunable rows in id order, `batch` at a time (keyset: each read is short)."""
        after = None
        while True:
            started = time.perf_counter()
            q = select(decisions).where(prunable(horizon_id, now), c.decision_id < hi,
                                        c.decision_id > after if after else c.decision_id >= lo)
            with self.engine.connect() as conn:
                rows = [dict(r) for r in conn.execute(q.order_by(c.decision_id).limit(self.batch)).mappings()]
            if not rows:
                return
            yield rows   # the archive writer's share of the batch counts too
            after = rows[-1]["decision_id"]
            self._pause(started)

    def _pause(self, started: float) -> None:
        if self.throttle:
            time.sleep((time.perf_counter() - started) * self.throttle)

    def _last_seq(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(journal.c.seq))).scalar() or 0)

    def _archive(self, day: date, lo: str, hi: str, horizon_id: str, now: datetime,
                 result: PruneResult) -> tuple[DayResult, list[str]]:
        """Write the day's archive (read back, manifest written); its result and the ids it holds."""
        written = write_day(self.archive_dir, day, self._rows(lo, hi, horizon_id, now), self.fmt)
        if written is None:
            return DayResult(day.isoformat(), 0), []
        manifest, ids = written
        result.manifests.append(manifest)
        out = DayResult(day.isoformat(), manifest.rows, archive=manifest.file)
        log.info("archived", extra={"day": out.day, "records": manifest.rows, "archive": manifest.file,
                                    "sha256": manifest.sha256})
        if self.on_archived is not None:
            self.on_archived(manifest)
        return out, ids

    def _archive_and_delete(self, day: date, lo: str, hi: str, horizon_id: str, now: datetime,
                            result: PruneResult) -> DayResult:
        snapshot = self._last_seq()   # a record with a journal entry after this changed since it was read
        out, ids = self._archive(day, lo, hi, horizon_id, now, result)
        if not ids:
            return out
        for i in range(0, len(ids), self.batch):
            started = time.perf_counter()
            out.deleted += self._delete(ids[i:i + self.batch], snapshot, horizon_id, now)
            self._pause(started)
        out.changed = out.rows - out.deleted
        log.info("pruned", extra={"day": out.day, "deleted": out.deleted, "changed_since_archived": out.changed})
        return out

    def _delete(self, ids: list[str], snapshot: int, horizon_id: str, now: datetime) -> int:
        """One short transaction: delete those of `ids` still prunable and unchanged since `snapshot`,
        with their journal entries and settled reservations."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Lock these rows first: a change to one of them that committed before is in the
                # journal the DELETE's subquery reads (READ COMMITTED: a new snapshot per
                # statement); one that comes after waits for this transaction. Only these old rows
                # are locked: Decide's inserts never wait. (On SQLite the DELETE statement runs
                # under the database's write lock: nothing commits between its subquery and it.)
                conn.execute(select(c.decision_id).where(c.decision_id.in_(ids)).with_for_update())
            changed = select(journal.c.decision_id).where(journal.c.seq > snapshot)
            res = conn.execute(delete(decisions).where(c.decision_id.in_(ids), prunable(horizon_id, now),
                                                       c.decision_id.not_in(changed)))
            gone = select(c.decision_id).where(c.decision_id.in_(ids))
            conn.execute(delete(journal).where(journal.c.decision_id.in_(ids), journal.c.decision_id.not_in(gone)))
            conn.execute(delete(budget_reservations).where(budget_reservations.c.decision_id.in_(ids),
                                                           budget_reservations.c.decision_id.not_in(gone)))
            return int(res.rowcount or 0)

    class _Lock:
        def __init__(self, pruner: Pruner, dry_run: bool) -> None:
            self.pruner, self.dry_run = pruner, dry_run
            self.file: Any = None
            self.conn: Any = None

        def __enter__(self) -> None:
            if self.dry_run:
                return
            p = self.pruner
            try:
                p.archive_dir.mkdir(parents=True, exist_ok=True)
                self.file = (p.archive_dir / ".prune.lock").open("w")
            except OSError as e:
                raise ArchiveError(f"{p.archive_dir}: cannot write archives there: {e}; nothing was deleted") from e
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.file.close()
                raise PruneBusy(f"another prune is writing to {p.archive_dir}") from None
            if p.engine.dialect.name == "postgresql":
                self.conn = p.engine.connect()
                if not self.conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_PRUNE_LOCK_KEY}).scalar():
                    self.__exit__()
                    raise PruneBusy("another replica is pruning this database")
                self.conn.commit()

        def __exit__(self, *exc: Any) -> None:
            if self.conn is not None:
                self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_PRUNE_LOCK_KEY})
                self.conn.close()
                self.conn = None
            if self.file is not None:
                self.file.close()
                self.file = None

    def _exclusive(self, dry_run: bool) -> Pruner._Lock:
        return Pruner._Lock(self, dry_run)
