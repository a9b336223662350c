"""`decider eval EXPR [--request JSON] [--bundle DIR]`: one CEL expression, like `opa eval`.

Prints the value as JSON (exit 0), or the evaluation error (exit 1); an expression that does not
compile is exit 2 with the position inside the expression.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from google.protobuf import json_format

from decider.errors import InvalidRequest

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    e = sub.add_parser("eval", help="evaluate one CEL expression (against a request, with a bundle's budgets)")
    e.add_argument("expression", help='a CEL expression, e.g. \'path.within(tool.args.path, "/workspace")\'')
    e.add_argument("--request", help="a DecideRequest as JSON: inline ({...}), a file path, or - for stdin")
    e.add_argument("--args", help="shortcut for the request's tool.args, as a JSON object")
    e.add_argument("--bundle", help="a bundle folder or .bundle file: `budget.<scope>` shows its budgets "
                                    "(limit, nothing spent)")
    e.add_argument("--format", choices=["value", "json"], default="value",
                   help="value: the result as JSON; json: {type, value} or {error}")
    e.set_defaults(func=_eval)


def _request(args: argparse.Namespace):  # noqa: ANN202 - pb.DecideRequest
    from decider.v1 import decider_pb2 as pb

    req = pb.DecideRequest()
    if args.request:
        text = args.request
        if text == "-":
            text = sys.stdin.read()
        elif not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        try:
            json_format.Parse(text, req)
        except json_format.ParseError as e:
            raise InvalidRequest("--request", str(e)) from None
    if args.args:
        try:
            tool_args = json.loads(args.args)
        except json.JSONDecodeError as e:
            raise InvalidRequest("--args", f"not JSON: {e}") from None
        if not isinstance(tool_args, dict):
            raise InvalidRequest("--args", "must be a JSON object")
        req.tool.args.update(tool_args)
    if not req.request.HasField("time"):
        req.request.time.FromDatetime(datetime.now(timezone.utc))   # as the server does
    return req


def _eval(args: argparse.Namespace) -> int:
    from decider.cel.evaluate import ExpressionError, evaluate, to_json

    budget: dict = {}
    env, lists = None, {}
    if args.bundle:
        from decider.bundle.compile import bundle_lists, list_declarations, load_bundle
        from decider.cel.env import environment
        from decider.engine.budgets import budget_views
        from decider.engine.state import State

        bundle = load_bundle(args.bundle)
        budget = budget_views(bundle, State())
        # The bundle's named lists, bound as the engine binds them: `lists.<name>`.
        env = environment(list_declarations(bundle.lists))
        lists = {f"lists.{name}": items for name, items in bundle_lists(bundle).items()}
    try:
        result = evaluate(args.expression, _request(args), budget, env=env, extra=lists)
    except ExpressionError as e:
        if args.format == "json":
            print(json.dumps({"errors": [{"line": x.line, "column": x.column, "message": x.message}
                                         for x in e.errors]}))
        for x in e.errors:
            print(f"<expression>:{x.line}:{x.column}: {x.message}", file=sys.stderr)
        return 2
    if result.type == "ERROR":
        if args.format == "json":
            print(json.dumps({"error": result.error}))
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    value = to_json(result.value)
    if args.format == "json":
        print(json.dumps({"type": result.type, "value": value}, ensure_ascii=False, sort_keys=True))
    else:
        print(json.dumps(value, ensure_ascii=False, sort_keys=True))
    return 0
