"""`decider report --since 7d`: what agents did, at what cost, under which controls — per team, agent
and workflow, from the decision records (reads `--db` like `decider log`).

Definitions (a row per group; a call is one decision record):
- allow / deny / approval rate: share of calls whose outcome was ALLOW / DENY / REQUIRE_APPROVAL;
- human intervention rate: share of calls on which a person acted (an approver approved or rejected
  the approval the call asked for); an approval that expired or a kill switch cancelled is not one;
- time to approval: from the REQUIRE_APPROVAL decision to the approver's answer (approved ones);
- estimated cost: what allowed calls estimated; actual cost: what ReportOutcome reported;
- denied spend: what denied calls estimated (spend the policy prevented);
- kill-switch denials: calls denied by a kill switch. The `kill_switches` section gives each switch
  set in the window with its time to effect — from setting it to the first call it denied — and
  `allowed_after`: calls in its scope that were still allowed after it was set (before it was
  cleared), e.g. by a replica that had not yet seen it; 0 means it took effect at once.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
import sys
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, select

from decider.errors import InvalidRequest

__all__ = ["register", "build_report", "parse_since", "GROUPS"]

GROUPS = {"team": "team", "agent": "agent_id", "workflow": "workflow"}
COLUMNS = ("calls", "allow_rate", "deny_rate", "approval_rate", "human_intervention_rate",
           "median_time_to_approval_s", "p90_time_to_approval_s", "expired_approvals", "estimated_cost",
           "actual_cost", "denied_spend", "kill_switch_denials")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = sub.add_parser("report", help="per team / agent / workflow: outcomes, approvals, cost, kill switches")
    r.add_argument("--db", default="sqlite:///decider.db")
    r.add_argument("--since", default="7d", help="a duration back from now (30m, 24h, 7d) or an ISO time")
    r.add_argument("--by", default="team,agent,workflow", help="groupings, comma-separated: team, agent, workflow")
    r.add_argument("--format", choices=["table", "json", "csv"], default="table")
    r.set_defaults(func=_report)


def parse_since(text: str, now: datetime) -> datetime:
    m = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        return now - timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: n})
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest("--since", f"not a duration (7d, 24h, 30m) or an ISO time: {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else (t if t.tzinfo else t.replace(tzinfo=timezone.utc))


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def _group_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    outcomes = [r["outcome"] for r in rows]
    asked = [r for r in rows if r["outcome"] == "REQUIRE_APPROVAL" and r.get("approval_id") == r["decision_id"]]
    human = [r for r in asked if r.get("approval_state") in ("approved", "consumed", "rejected")
             and r.get("resolved_by") and not str(r["resolved_by"]).startswith("kill-switch:")]
    waits = [(_utc(r["resolved_at"]) - _utc(r["time"])).total_seconds()  # type: ignore[operator]
             for r in asked if r.get("approval_state") in ("approved", "consumed") and r.get("resolved_at")]
    return {
        "calls": n,
        "allow_rate": round(outcomes.count("ALLOW") / n, 4),
        "deny_rate": round(outcomes.count("DENY") / n, 4),
        "approval_rate": round(outcomes.count("REQUIRE_APPROVAL") / n, 4),
        "human_intervention_rate": round(len(human) / n, 4),
        "median_time_to_approval_s": round(statistics.median(waits), 3) if waits else None,
        "p90_time_to_approval_s": round(_pct(waits, 0.9), 3) if waits else None,  # type: ignore[arg-type]
        "expired_approvals": sum(1 for r in asked if r.get("approval_state") == "expired"),
        # start=0.0: an empty sum is the int 0, which the table printed as "0" beside "2.50" (issue 28)
        "estimated_cost": round(sum((r["estimated_cost"] or 0.0 for r in rows if r["outcome"] == "ALLOW"), 0.0), 4),
        "actual_cost": round(sum((r["actual_cost"] or 0.0 for r in rows), 0.0), 4),
        "denied_spend": round(sum((r["estimated_cost"] or 0.0 for r in rows if r["outcome"] == "DENY"), 0.0), 4),
        "kill_switch_denials": sum(1 for r in rows if r.get("kill_switch_id")),
    }


def build_report(engine: Engine, since: datetime, by: Iterable[str] = GROUPS) -> dict[str, Any]:
    from decider.store.approvals import SCOPE_COLUMNS
    from decider.store.decisions import decisions
    from decider.store.kill_switches import kill_switches

    c = decisions.c
    cols = [c.decision_id, c.time, c.agent_id, c.team, c.workflow, c.outcome, c.estimated_cost, c.actual_cost,
            c.approval_state, c.approval_id, c.resolved_by, c.resolved_at, c.kill_switch_id,
            *(col for col in SCOPE_COLUMNS.values() if col.name not in ("agent_id", "team", "workflow"))]
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(*cols).where(c.time >= since).order_by(c.decision_id)).mappings()]
        switches = [dict(r) for r in conn.execute(
            select(kill_switches).where(kill_switches.c.created_at >= since).order_by(kill_switches.c.id)).mappings()]
    out: dict[str, Any] = {"since": since.isoformat(), "calls": len(rows), "groups": {}}
    if rows:
        out["total"] = _group_row(rows)
    for g in by:
        column = GROUPS[g]
        buckets: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            buckets.setdefault(r[column] or "", []).append(r)
        out["groups"][g] = [{g: key, **_group_row(rs)} for key, rs in sorted(buckets.items())]
    first_denial: dict[str, datetime] = {}
    for r in rows:
        if r.get("kill_switch_id") and r["kill_switch_id"] not in first_denial:
            first_denial[r["kill_switch_id"]] = _utc(r["time"])  # type: ignore[assignment]
    out["kill_switches"] = [{
        "id": s["id"], "scope": s["scope"], "value": s["value"], "set_at": _utc(s["created_at"]).isoformat(),  # type: ignore[union-attr]
        "cleared_at": _utc(s["cleared_at"]).isoformat() if s["cleared_at"] else None,  # type: ignore[union-attr]
        "denials": sum(1 for r in rows if r.get("kill_switch_id") == s["id"]),
        "allowed_after": sum(1 for r in rows if r["outcome"] == "ALLOW" and _in_scope(r, s)
                             and _utc(r["time"]) >= _utc(s["created_at"])  # type: ignore[operator]
                             and (s["cleared_at"] is None or _utc(r["time"]) < _utc(s["cleared_at"]))),  # type: ignore[operator]
        "time_to_effect_s": (round((first_denial[s["id"]] - _utc(s["created_at"])).total_seconds(), 3)  # type: ignore[operator]
                             if s["id"] in first_denial else None),
    } for s in switches]
    return out


def _in_scope(row: dict[str, Any], switch: dict[str, Any]) -> bool:
    from decider.store.approvals import SCOPE_COLUMNS

    if switch["scope"] == "platform":
        return True
    col = SCOPE_COLUMNS.get(switch["scope"])
    return col is not None and row.get(col.name) == switch["value"]


MONEY = ("estimated_cost", "actual_cost", "denied_spend")


def _fmt(v: Any, money: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) or money:   # money always shows cents, whatever type the store returned
        return f"{float(v):.2f}"
    return str(v)


def _table(report: dict[str, Any]) -> str:
    short = {"calls": "calls", "allow_rate": "allow", "deny_rate": "deny", "approval_rate": "approval",
             "human_intervention_rate": "human", "median_time_to_approval_s": "ttA p50 s",
             "p90_time_to_approval_s": "ttA p90 s", "expired_approvals": "expired", "estimated_cost": "est cost",
             "actual_cost": "act cost", "denied_spend": "denied $", "kill_switch_denials": "killed"}
    lines = [f"decisions since {report['since']}: {report['calls']}"]
    for g, groups in report["groups"].items():
        head = [g] + [short[k] for k in COLUMNS]
        body = [[str(x[g] or "(none)")] + [_fmt(x[k], k in MONEY) for k in COLUMNS] for x in groups]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        lines.append("")
        lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True))))
        for r in body:
            lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True))))
    if report["kill_switches"]:
        lines += ["", "kill switches: id  scope=value  set at  denials  time to effect  allowed after"]
        for s in report["kill_switches"]:
            tte = "-" if s["time_to_effect_s"] is None else f"{s['time_to_effect_s']:.3f}s"
            lines.append(f"  {s['id']}  {s['scope']}={s['value']}  {s['set_at']}  {s['denials']}  {tte}  "
                         f"{s['allowed_after']}")
    return "\n".join(lines)


def _csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "key", *COLUMNS])
    for g, groups in report["groups"].items():
        for x in groups:
            w.writerow([g, x[g], *("" if x[k] is None else x[k] for k in COLUMNS)])
    return buf.getvalue().rstrip("\n")


def _report(args: argparse.Namespace) -> int:
    from decider.cli.stream import open_db

    by = [b.strip() for b in args.by.split(",") if b.strip()]
    unknown = [b for b in by if b not in GROUPS]
    if unknown:
        raise InvalidRequest("--by", f"unknown grouping {unknown[0]!r}; one of {', '.join(GROUPS)}")
    report = build_report(open_db(args.db), parse_since(args.since, datetime.now(timezone.utc)), by)
    text = {"json": lambda r: json.dumps(r, indent=2), "csv": _csv, "table": _table}[args.format](report)
    sys.stdout.write(text + "\n")
    return 0
