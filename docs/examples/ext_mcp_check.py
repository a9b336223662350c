"""docs/guards.md: what agentgateway sends to `decider serve --ext-mcp` before it forwards a tools/call.

    python docs/examples/ext_mcp_check.py 127.0.0.1:50051 payments.refund '{"order": "o-5", "amount": 300}' gpt-5
"""

from __future__ import annotations

import json
import sys

import grpc
from google.protobuf import json_format

from decider.agentgateway import ext_mcp_pb2 as xpb
from decider.agentgateway import ext_mcp_pb2_grpc as xpb_grpc

target, tool, arguments, model = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
request = xpb.McpRequest(service_name="billing", method="tools/call")
request.metadata_context.update({"agent": {"id": "refund-bot", "team": "finance", "model": model}})
request.mcp_request.update({"name": tool, "arguments": arguments})
with grpc.insecure_channel(target) as channel:
    result = xpb_grpc.ExtMcpStub(channel).CheckRequest(
        request, metadata=(("authorization", "Bearer gateway-token"),), timeout=120)
print(json.dumps(json_format.MessageToDict(result), indent=2))
