"""Group commit: one writer thread commits every record that arrived meanwhile in one transaction.

A decision's answer is sent only after its record is committed (durable before the response).
Committing each request separately would cost one fsync per decision; batching costs one per
batch, so throughput grows with concurrency while each caller still waits for its own commit.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, Table, insert

from decider.store.sqlite_raw import LOOP_BUSY_TIMEOUT_MS, RawInsert, connect_raw, is_busy, sqlite_file

__all__ = ["GroupCommitWriter", "WriteGroup", "WriterClosed", "row_completer", "CHECKPOINT_EVERY"]

log = logging.getLogger("decider.store.writer")

Done = Callable[[BaseException | None], None]
# A statement list run inside the writer's transaction (see `GroupCommitWriter.run`).
Op = Callable[[sqlite3.Connection], Any]
# WAL checkpoint cadence for an SQLite file, in commits (a commit adds ~5-15 pages to the WAL;
# SQLite's own default checkpoints at 1,000 pages).
CHECKPOINT_EVERY = 128


class WriterClosed(RuntimeError):
    pass


class GroupCommitWriter:
    def __init__(self, engine: Engine, table: Table, max_batch: int = 1024) -> None:
        self._engine = engine
        self._insert = insert(table)
        self._complete = row_completer(table)
        # An SQLite file: the batch goes straight to sqlite3 (see sqlite_raw for why).
        path = sqlite_file(engine)
        self._raw = RawInsert(engine, table) if path else None
        # Neither connection checkpoints on commit: SQLite would run the checkpoint (copying the
        # WAL into the database file, a few ms) inside whichever commit crosses the threshold,
        # and for an inline commit that is the event loop. The writer thread runs a PASSIVE
        # checkpoint every CHECKPOINT_EVERY commits instead; it never blocks writers.
        self._conn = connect_raw(path, autocheckpoint=False) if path else None
        # The event loop's own connection, for a decision that is alone (see `write`).
        self._inline_conn = (connect_raw(path, autocheckpoint=False, busy_timeout_ms=LOOP_BUSY_TIMEOUT_MS)
                             if path else None)
        self._busy = False   # the writer thread is committing a batch
        self._commits_since_checkpoint = 0
        self.inline_commits = 0
        self.inline_busy = 0      # inline commits that found the database locked and went to the thread
        self.checkpoints = 0
        self._max_batch = max_batch
        self._pending: list[tuple[dict[str, Any], Any]] = []
        self._cv = threading.Condition()
        self._closed = False
        # Rows awaited from an event loop are handed over once per loop iteration, not once per row:
        # one lock round and one wake-up of the writer thread per batch instead of per decision.
        self._staged: dict[asyncio.AbstractEventLoop, list[tuple[dict[str, Any], Any]]] = {}
        self.batches = 0
        self.rows = 0
        # Told of every commit: on_commit(records in it, records still queued) (server/metrics.py).
        self.on_commit: Callable[[int, int], None] | None = None
        self._thread = threading.Thread(target=self._run, name="decider-writer", daemon=True)
        self._thread.start()

    def submit(self, row: dict[str, Any], done: Done) -> None:
        """Queue a row; `done(None)` runs on the writer thread once it is committed, `done(exc)` if not."""
        self._enqueue([(row, done)])

    def _enqueue(self, items: list[tuple[dict[str, Any], Any]]) -> None:
        with self._cv:
            if self._closed:
                raise WriterClosed("the decision writer is shut down")
            self._pending.extend(items)
            self._cv.notify()

    async def write(self, row: dict[str, Any], alone: bool = False) -> None:
        """Await the commit of `row` from asyncio code.

        `alone`: the caller has nothing else in flight. Then, on an SQLite file with the writer
        thread idle, the row is committed right here on the event loop: there is no batch to
        form, and handing one row to the thread and back costs more (two thread wake-ups and a
        self-pipe round trip, ~0.1 ms of CPU) than the commit's own work. The loop is blocked
        for the fsync, which at one decision in flight delays nobody. If another connection holds
        the write lock (a replica's commit, a control RPC), the loop waits at most
        LOOP_BUSY_TIMEOUT_MS and then leaves the row to the writer thread, which waits as long as
        it takes.
        """
        loop = asyncio.get_running_loop()
        if (alone and self._inline_conn is not None and self._raw is not None and not self._busy
                and not self._pending and loop not in self._staged and not self._closed):
            try:
                self._raw.run(self._inline_conn, [row])
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                self.inline_busy += 1   # rolled back: the writer thread commits it below
            else:
                self.inline_commits += 1
                self.rows += 1
                self.batches += 1
                self._count_commit()
                if self.on_commit is not None:
                    self.on_commit(1, 0)
                return
        await self.stage(row)

    def stage(self, row: dict[str, Any], group: WriteGroup | None = None) -> Any:
        """Queue `row` for the next batch handed to the writer thread (from the event loop).
        Without `group`: returns the future its commit settles. With `group`: returns the row's
        index in `group.errors`; the group is settled once for all its rows (`WriteGroup.wait`),
        which costs no future and no callback per row (DeciderService.decide_many)."""
        if self._closed:
            raise WriterClosed("the decision writer is shut down")
        loop = asyncio.get_running_loop()
        staged = self._staged.get(loop)
        if staged is None:
            staged = self._staged[loop] = []
            loop.call_soon(self._hand_over, loop)
        if group is not None:
            slot = group._add(loop)
            staged.append((row, slot))
            return slot.index
        fut: asyncio.Future[None] = loop.create_future()
        staged.append((row, fut))
        return fut

    @property
    def runs_ops(self) -> bool:
        """Can `run` take statements (an SQLite file, on the stdlib driver)? Else use SQLAlchemy."""
        return self._raw is not None

    async def run(self, op: Op, alone: bool = False) -> Any:
        """Run `op(conn)` inside the next batch's transaction (after its inserts) and return its
        result once that transaction is committed: a small write (ReportOutcome) shares the
        decisions' fsync instead of paying its own. If `op` raises, its statements are rolled back
        to a savepoint, the batch commits without them, and the exception is raised here.
        `alone`: as for `write`, commit on the event loop when nothing else is in flight.
        Only for an SQLite file (`runs_ops`)."""
        if self._raw is None:
            raise RuntimeError("GroupCommitWriter.run needs an SQLite file")
        loop = asyncio.get_running_loop()
        if (alone and self._inline_conn is not None and not self._busy and not self._pending
                and loop not in self._staged and not self._closed):
            conn = self._inline_conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                self.inline_busy += 1   # another connection writes: the writer thread waits for it
            else:
                try:
                    result = op(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                self.inline_commits += 1
                self.batches += 1
                self._count_commit()
                return result
        fut: asyncio.Future[Any] = loop.create_future()
        staged = self._staged.get(loop)
        if staged is None:
            staged = self._staged[loop] = []
            loop.call_soon(self._hand_over, loop)
        staged.append((_OpItem(op), fut))
        return await fut

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Runs on `loop` once per iteration that staged rows: pass them to the writer thread."""
        items = self._staged.pop(loop, [])
        if not items:
            return
        try:
            self._enqueue(items)
        except WriterClosed as exc:
            _resolve_each([(w, exc) for _, w in items])

    def write_sync(self, row: dict[str, Any]) -> None:
        ev = threading.Event()
        box: list[BaseException | None] = [None]

        def done(err: BaseException | None) -> None:
            box[0] = err
            ev.set()

        self.submit(row, done)
        ev.wait()
        if box[0] is not None:
            raise box[0]

    def close(self) -> None:
        """Commit everything queued, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def queued(self) -> int:
        """Records handed to the writer thread and not yet taken into a batch (read without the lock:
        a gauge)."""
        return len(self._pending)

    def _count_commit(self) -> None:
        # Counted from the loop and the thread without a lock: an increment lost to a race only
        # shifts the next checkpoint by one commit.
        self._commits_since_checkpoint += 1
        if self._commits_since_checkpoint >= CHECKPOINT_EVERY:
            with self._cv:
                self._cv.notify()   # the thread may be idle: wake it to checkpoint

    def _checkpoint_due(self) -> bool:
        return self._conn is not None and self._commits_since_checkpoint >= CHECKPOINT_EVERY

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed and not self._checkpoint_due():
                    self._cv.wait()
                if not self._pending and self._closed:
                    for conn in (self._conn, self._inline_conn):
                        if conn is not None:
                            conn.close()
                    return
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                self._busy = bool(batch)
            if batch:
                try:
                    self._commit(batch)
                finally:
                    self._busy = False
                if self._raw is not None:
                    self._commits_since_checkpoint += 1
            if self._checkpoint_due():
                self._checkpoint()

    def _checkpoint(self) -> None:
        self._commits_since_checkpoint = 0
        try:
            assert self._conn is not None
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self.checkpoints += 1
        except sqlite3.Error as exc:  # the next one will try again; nothing is lost
            log.warning("WAL checkpoint failed", extra={"error": str(exc)})

    def _commit(self, batch: list[tuple[Any, Any]]) -> None:
        results: list[Any] = []
        try:
            if self._raw is not None and self._conn is not None:
                rows = [row for row, _ in batch if not isinstance(row, _OpItem)]
                ops = [row for row, _ in batch if isinstance(row, _OpItem)]
                if not ops:
                    self._raw.run(self._conn, rows)
                else:
                    results = self._run_with_ops(self._conn, rows, ops)
            else:
                with self._engine.begin() as conn:
                    conn.execute(self._insert, [self._complete(row) for row, _ in batch])
        except Exception as exc:  # noqa: BLE001 - reported to every waiter, never swallowed
            if len(batch) == 1:
                log.error("decision record not written", extra={"error": str(exc)})
                _notify([batch[0][1]], exc)
                return
            # One bad row must not fail its neighbours: retry each on its own.
            for item in batch:
                self._commit([item])
            return
        self.batches += 1
        records = sum(1 for row, _ in batch if not isinstance(row, _OpItem))
        self.rows += records
        if results:
            it = iter(results)
            _notify_each([(w, next(it) if isinstance(row, _OpItem) else None) for row, w in batch])
        else:
            _notify([w for _, w in batch], None)
        if self.on_commit is not None and records:
            self.on_commit(records, self.queued())

    def _run_with_ops(self, conn: sqlite3.Connection, rows: list[dict[str, Any]],
                      ops: list[_OpItem]) -> list[Any]:
        """The batch's inserts, then each op under its own savepoint, in one transaction. Returns
        each op's result or the exception it raised (its own statements rolled back)."""
        assert self._raw is not None
        results: list[Any] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            if rows:
                conn.executemany(self._raw.sql, [self._raw.params(r) for r in rows])
            for item in ops:
                conn.execute("SAVEPOINT outcome_op")
                try:
                    results.append(item.op(conn))
                except Exception as exc:  # noqa: BLE001 - this op's failure is its caller's alone
                    conn.execute("ROLLBACK TO outcome_op")
                    results.append(exc)
                conn.execute("RELEASE outcome_op")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results


def row_completer(table: Table) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function giving a row every column of `table` (its default, else None, where missing).

    An executemany takes its column list from the FIRST row of the batch; a key present only in a
    later row (an approval's `approval_id`, a shadow outcome) would be silently dropped.
    """
    defaults = {c.name: (c.default.arg if c.default is not None and not callable(c.default.arg) else None)
                for c in table.columns}

    def complete(row: dict[str, Any]) -> dict[str, Any]:
        if len(row) == len(defaults):
            return row
        full = dict(defaults)
        full.update(row)
        return full

    return complete


def _notify(waiters: list[Any], err: BaseException | None) -> None:
    """From the writer thread: callbacks run here; futures and group slots are settled with ONE
    thread-safe call per loop (each call writes to the loop's self-pipe, so one per row would cost
    a syscall per row)."""
    _notify_each([(w, err) for w in waiters])


class _OpItem:
    """A queued `run` op (a batch item that is not a record row)."""

    __slots__ = ("op",)

    def __init__(self, op: Op) -> None:
        self.op = op


def _notify_each(items: list[tuple[Any, Any]]) -> None:
    """From the writer thread, after a commit: each waiter gets its own result (None, or an
    exception instance: an op's failure, or the commit's). Callbacks run here; futures and group
    slots are settled on their loop, with one thread-safe call per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
    for w, result in items:
        if isinstance(w, (asyncio.Future, _Slot)):
            by_loop.setdefault(w.get_loop(), []).append((w, result))
        else:
            w(result if isinstance(result, BaseException) else None)
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_each, pairs)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _resolve_each(pairs: list[tuple[Any, Any]]) -> None:
    """On the waiters' loop: settle each future or group slot with its result."""
    for w, result in pairs:
        if type(w) is _Slot:
            w.group._settle(w.index, result if isinstance(result, BaseException) else None)
        elif w.done():
            continue
        elif isinstance(result, BaseException):
            w.set_exception(result)
        else:
            w.set_result(result)


class WriteGroup:
    """Records staged together from one event loop and awaited together (`stage(row, group)`):
    one wake-up for the whole group when its last record's commit is known, and each record's
    outcome in `errors` (None: committed). Used on the loop thread only."""

    __slots__ = ("errors", "_left", "_waiter")

    def __init__(self) -> None:
        self.errors: list[BaseException | None] = []
        self._left = 0
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.errors)

    def _add(self, loop: asyncio.AbstractEventLoop) -> _Slot:
        self.errors.append(None)
        self._left += 1
        return _Slot(self, len(self.errors) - 1, loop)

    def _settle(self, index: int, err: BaseException | None) -> None:
        self.errors[index] = err
        self._left -= 1
        if self._left == 0 and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Until every record staged in this group is committed or has failed."""
        if self._left:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter


class _Slot:
    """One staged record of a WriteGroup, as the writer thread's waiter for it."""

    __slots__ = ("group", "index", "_loop")

    def __init__(self, group: WriteGroup, index: int, loop: asyncio.AbstractEventLoop) -> None:
        self.group = group
        self.index = index
        self._loop = loop

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop
