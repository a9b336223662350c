"""The grpc.aio floor: `decider.v1.Decider/Decide`, `DecideStream` and `DecideBatchStream` answered
with the bench rules in plain Python (workload.expected_outcome) — no CEL, no validation, no
record, no store. What is left is what any Python grpc.aio server pays per call, so its decisions
per server CPU-second bound what decider can reach on each path (issue 17's "what limits it").

    python tools/bench/floor_server.py --listen 127.0.0.1:0 --port-file PORT   # compare.py --floor starts it

Serves grpc.health.v1 (SERVING) so compare.py's readiness check works. Loopback only; stops on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
for p in (str(HERE), str(REPO_ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from workload import expected_outcome  # noqa: E402

from decider.api.wire import split_batch  # noqa: E402
from decider.v1 import decider_pb2 as pb  # noqa: E402
from decider.values.canonical import struct_to_dict  # noqa: E402

_OUTCOME = {"ALLOW": pb.ALLOW, "DENY": pb.DENY, "REQUIRE_APPROVAL": pb.REQUIRE_APPROVAL}


def answer(raw: bytes) -> pb.DecideResponse:
    req = pb.DecideRequest.FromString(raw)
    args = struct_to_dict(req.tool.args)
    outcome = expected_outcome(req.tool.name, args, req.agent.model, req.request.environment)
    return pb.DecideResponse(outcome=_OUTCOME[outcome], request_id=req.request.id)


async def decide(raw: bytes, context: grpc.aio.ServicerContext) -> pb.DecideResponse:
    return answer(raw)


async def decide_stream(requests: object, context: grpc.aio.ServicerContext) -> None:
    while (raw := await context.read()) is not grpc.aio.EOF:
        await context.write(answer(raw))


async def decide_batch_stream(requests: object, context: grpc.aio.ServicerContext) -> None:
    while (raw := await context.read()) is not grpc.aio.EOF:
        reply = pb.DecideBatchResponse(responses=[answer(part) for part in split_batch(raw)])
        await context.write(reply)


async def serve(listen: str, port_file: Path | None) -> None:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    if not listen.startswith(("127.0.0.1:", "[::1]:", "localhost:")):
        raise SystemExit("floor_server: loopback addresses only")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("decider.v1.Decider", {
        "Decide": grpc.unary_unary_rpc_method_handler(
            decide, request_deserializer=None, response_serializer=pb.DecideResponse.SerializeToString),
        "DecideStream": grpc.stream_stream_rpc_method_handler(
            decide_stream, request_deserializer=None, response_serializer=pb.DecideResponse.SerializeToString),
        "DecideBatchStream": grpc.stream_stream_rpc_method_handler(
            decide_batch_stream, request_deserializer=None,
            response_serializer=pb.DecideBatchResponse.SerializeToString),
    })])
    checker = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port(listen)
    await server.start()
    result = checker.set("", health_pb2.HealthCheckResponse.SERVING)
    if asyncio.iscoroutine(result):
        await result
    if port_file is not None:
        port_file.write_text(str(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--port-file", type=Path)
    args = ap.parse_args(argv)
    asyncio.run(serve(args.listen, args.port_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
