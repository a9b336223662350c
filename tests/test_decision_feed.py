"""The WatchDecisions feed on a real SQLite file: a decision committed after a later id was already
published (group commit makes ids before commits) is still published, once; a stream that falls
behind is ended rather than buffering without bound."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from decider.record.ids import new_id
from decider.server.queries import DecisionFeed
from decider.store import connect
from decider.store.decisions import DecisionStore
from decider.store.queries import QueryStore


def row(decision_id: str) -> dict[str, Any]:
    from datetime import datetime, timezone

    return {"decision_id": decision_id, "time": datetime.now(timezone.utc), "agent_id": "a", "tool_name": "t",
            "args_hash": "0" * 64, "risk_tier": 0, "outcome": "ALLOW", "reasons": json.dumps([]),
            "matched_rules": "[]", "deciding_rule": "r", "bundle_name": "b", "bundle_version": "1",
            "bundle_revision": "0" * 64, "eval_us": 1}


def test_a_late_commit_is_published_once_and_history_is_not(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'feed.db'}")
    store = DecisionStore(engine)
    feed = DecisionFeed(QueryStore(engine), interval_s=3600, sweep_s=0)   # polled by hand below; every poll sweeps

    async def run() -> list[list[str]]:
        store.insert_many([row(new_id())])              # history: committed before anyone watched
        sub = await feed.subscribe()
        now = int(time.time() * 1000)
        early, later = new_id(now), new_id(now + 5)
        store.insert_many([row(later)])                  # the later id commits first …
        first = feed.poll(True)
        store.insert_many([row(early)])                  # … the earlier id a moment later
        second = feed.poll(True)
        third = feed.poll(True)                          # nothing new: nothing published again
        await feed.unsubscribe(sub)
        return [[r["decision_id"] for r in batch] for batch in (first, second, third)] + [[early, later]]

    first, second, third, (early, later) = asyncio.run(run())
    assert (first, second, third) == ([later], [early], [])


def test_a_stream_that_falls_behind_is_ended(tmp_path: Path) -> None:
    feed = DecisionFeed(QueryStore(connect(f"sqlite:///{tmp_path / 'feed.db'}")), interval_s=3600, backlog=2)

    async def run() -> tuple[bool, list[Any], bool]:
        slow = await feed.subscribe()
        fast = await feed.subscribe()
        for i in range(3):
            feed.publish([{"decision_id": str(i)}])
            await fast.queue.get()                       # this one keeps up
        woken = await slow.queue.get()                   # the slow one is woken with an empty batch
        still_subscribed = fast.overflowed
        await feed.unsubscribe(fast)
        await feed.unsubscribe(slow)
        return slow.overflowed, woken, still_subscribed

    overflowed, woken, fast_overflowed = asyncio.run(run())
    assert overflowed and woken == [] and not fast_overflowed
