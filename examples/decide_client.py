"""Ask decider from Python, as an enforcement point would (docs/api.md runs this).

    python examples/decide_client.py [HOST:PORT]      # a server without tokens; default 127.0.0.1:50051
"""

from __future__ import annotations

import sys

from decider.client import DeciderClient
from decider.v1 import decider_pb2 as pb

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
with DeciderClient(target) as client:
    resp = client.decide(
        agent={"id": "refund-bot", "team": "finance", "model": "gpt-5"},
        tool="payments.refund", tool_server="mcp://billing",
        args={"amount": 2500, "order": "o-1"}, estimated_cost=5.0,
    )
    print(pb.Outcome.Name(resp.outcome), resp.deciding_rule, list(resp.approval.approvers))
    record = client.get_decision(resp.decision_id)
    print(record.bundle.revision[:12], record.risk_tier, dict(sorted(record.args.items())))
