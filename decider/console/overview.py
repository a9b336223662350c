"""The overview page: the numbers `decider report` prints, over a chosen window, and the geometry of
their charts (inline SVG drawn by the console itself: no charting library, no CDN, the CSP stays
strict). Pure: record and kill-switch views in (console/views.py), a dict for the template out."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["WINDOWS", "MAX_RECORDS", "overview", "parse_time"]

# The windows an operator can choose, and how many bars each chart has (one per minute up to 1 h).
WINDOWS: dict[str, tuple[timedelta, int]] = {
    "15m": (timedelta(minutes=15), 15),
    "1h": (timedelta(hours=1), 60),
    "6h": (timedelta(hours=6), 72),
    "24h": (timedelta(hours=24), 96),
}
MAX_RECORDS = 10_000   # read at most this many decisions per refresh; the page says when it was cut
CHART_W, CHART_H = 720.0, 180.0
OUTCOME_ORDER = ("ALLOW", "REQUIRE_APPROVAL", "DENY")   # stacked bottom to top
_SWITCH_ID = re.compile(r"^kill switch (\S+) \(")


def parse_time(text: str) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def _pct(xs: list[float], q: float) -> float | None:
    # The same nearest-rank percentile as `decider report`.
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def _nice_max(v: float) -> float:
    """A round axis maximum at or above v (1, 2, 5 × 10^k)."""
    if v <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(v))
    return next(m * base for m in (1, 2, 5, 10) if m * base >= v)


def overview(records: list[dict[str, Any]], switches: list[dict[str, Any]], budgets: list[dict[str, Any]],
             window: str, now: datetime, truncated: bool = False) -> dict[str, Any]:
    span, bars = WINDOWS[window]
    start = now - span
    bucket_s = span.total_seconds() / bars
    rows = [(t, r) for r in records if (t := parse_time(r["time"])) is not None and start <= t <= now]
    counts = [dict.fromkeys(OUTCOME_ORDER, 0) for _ in range(bars)]
    for t, r in rows:
        i = min(bars - 1, int((t - start).total_seconds() // bucket_s))
        if r["outcome"] in counts[i]:
            counts[i][r["outcome"]] += 1
    per_min = 60.0 / bucket_s
    top = _nice_max(max((sum(c.values()) * per_min for c in counts), default=0.0))
    bar_w = CHART_W / bars
    rects: list[dict[str, Any]] = []
    for i, c in enumerate(counts):
        y = CHART_H
        for outcome in OUTCOME_ORDER:
            if not c[outcome]:
                continue
            rate = c[outcome] * per_min
            h = CHART_H * rate / top
            y -= h
            at = start + timedelta(seconds=i * bucket_s)
            rects.append({"x": round(i * bar_w + 1, 2), "y": round(y, 2), "w": round(max(bar_w - 2, 1), 2),
                          "h": round(h, 2), "outcome": outcome,
                          "title": f"{at:%H:%M} UTC: {rate:g} {outcome} per minute ({c[outcome]} decisions)"})

    # Approvals, counted as `decider report` counts them: the decision that asked, not its ALLOW.
    asked = [r for _, r in rows if r["outcome"] == "REQUIRE_APPROVAL" and r["approval"]["id"] == r["id"]]
    human = [r for r in asked if r["approval"]["state"] in ("approved", "consumed", "rejected")
             and r["approval"]["resolved_by"] and not r["approval"]["resolved_by"].startswith("kill-switch:")]
    waits = [(parse_time(r["approval"]["resolved_at"]) - parse_time(r["time"])).total_seconds()  # type: ignore[operator]
             for r in asked if r["approval"]["state"] in ("approved", "consumed") and r["approval"]["resolved_at"]]
    n = len(rows)
    outcomes = {o: sum(1 for _, r in rows if r["outcome"] == o) for o in OUTCOME_ORDER}

    # Kill-switch time to effect: from the switch's creation to the first call it denied.
    first_denial: dict[str, datetime] = {}
    for t, r in sorted(rows, key=lambda x: x[0]):
        if r["deciding_rule"] == "killed" and r["reasons"]:
            m = _SWITCH_ID.match(r["reasons"][0]["text"])
            if m and m.group(1) not in first_denial:
                first_denial[m.group(1)] = t
    kills = []
    for s in switches:
        created = parse_time(s["created_at"])
        cleared = parse_time(s["cleared_at"])
        if created is None or (cleared is not None and cleared < start):
            continue
        hit = first_denial.get(s["id"])
        kills.append({**s, "denials": sum(1 for _, r in rows if r["deciding_rule"] == "killed" and r["reasons"]
                                          and r["reasons"][0]["text"].startswith(f"kill switch {s['id']} (")),
                      "time_to_effect_s": round((hit - created).total_seconds(), 3) if hit and hit >= created else None})

    budget_bars = [{**b, "bar_w": round(3.0 * b["percent"], 2)} for b in budgets]   # 300 px at 100 %
    return {
        "window": window, "windows": list(WINDOWS), "start": start, "now": now, "truncated": truncated,
        "calls": n, "outcomes": outcomes,
        "human_intervention_rate": len(human) / n if n else None,
        "tta_p50_s": _pct(waits, 0.5), "tta_p95_s": _pct(waits, 0.95), "approvals_asked": len(asked),
        "expired_approvals": sum(1 for r in asked if r["approval"]["state"] == "expired"),
        "chart": {"w": CHART_W, "h": CHART_H, "rects": rects, "top": top, "bars": bars,
                  "bucket_s": bucket_s, "start": f"{start:%H:%M}", "end": f"{now:%H:%M}"},
        "kill_switches": kills, "budgets": budget_bars,
    }
