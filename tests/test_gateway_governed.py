"""SPEC §8 Round two: every MCP method that reaches an upstream is decided, with real parts — a real
decider, the gateway as a subprocess, @modelcontextprotocol/server-everything (resources, resource
templates, prompts, completions, subscriptions) from npm and the crashy fixture, which logs every
request it receives so a test can see what reached the upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import grpc
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from decider.gateway.proxy import POLICY_REFUSED
from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

from .gateway_support import Setup, ensure_node_tools, make_setup, stdio_gateway
from .helpers import start_server
from .test_gateway_mcp import approve_when_pending

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    ensure_node_tools()
    s = make_setup(tmp_path_factory.mktemp("governed"))
    try:
        yield s
    finally:
        s.decider.stop()


def ids_of(result: object) -> list[str]:
    meta = getattr(result, "meta", None) or {}
    return list((meta.get("dev.decider/decision") or {}).get("decision_ids") or [])


def records(setup: Setup, server: str) -> list[pb.DecisionRecord]:
    """Every decision record of this upstream (ListDecisions, oldest first)."""
    with grpc.insecure_channel(setup.decider.target) as ch:
        resp = pb_grpc.QueriesStub(ch).ListDecisions(pb.ListDecisionsRequest(limit=1000), timeout=10,
                                                     metadata=(("authorization", "Bearer admin-token"),))
    return [r for r in resp.decisions if r.tool_server == server]


def seen_upstream(setup: Setup) -> list[dict]:
    path = setup.crashy_log
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_resources_prompts_and_completions_are_decided_and_recorded(setup: Setup) -> None:
    async def run() -> list[str]:
        ids: list[str] = []
        async with stdio_gateway(setup.config("everything", file="gw-everything.yaml")) as gw:
            static = "demo://resource/static/document/architecture.md"
            read = await gw.read_resource(static)
            assert "Architecture" in read.contents[0].text
            ids += ids_of(read)

            # a resource template's URI: denied by the policy, never read
            with pytest.raises(MCPError) as denied:
                await gw.read_resource("demo://resource/dynamic/text/1")
            assert denied.value.code == POLICY_REFUSED
            assert "Dynamic resources are not for agents" in denied.value.message
            ids += denied.value.data["dev.decider/decision"]["decision_ids"]
            assert denied.value.data["dev.decider/decision"]["outcome"] == "DENY"

            got = await gw.get_prompt("everything__args-prompt", {"city": "Paris"})
            assert "Paris" in got.messages[0].content.text
            ids += ids_of(got)

            with pytest.raises(MCPError) as default:        # no rule: the bundle's default deny
                await gw.get_prompt("everything__simple-prompt")
            ids += default.value.data["dev.decider/decision"]["decision_ids"]

            done = await gw.complete(types.PromptReference(name="everything__completable-prompt"),
                                     {"name": "department", "value": "En"})
            assert "Engineering" in done.completion.values
            ids += ids_of(done)

            await gw.subscribe_resource(static)
        return ids

    ids = anyio.run(run)
    recs = {r.decision_id: r for r in records(setup, "mcp://everything")}
    assert set(ids) <= set(recs)
    by_tool = [(recs[i].tool_name, recs[i].outcome) for i in ids]
    assert by_tool == [("resources/read", pb.ALLOW), ("resources/read", pb.DENY), ("prompts/get", pb.ALLOW),
                       ("prompts/get", pb.DENY), ("completion/complete", pb.ALLOW)]
    assert dict(recs[ids[0]].args) == {"uri": "demo://resource/static/document/architecture.md"}
    prompt_args = json.loads(json.dumps(dict(recs[ids[2]].args), default=dict))
    assert prompt_args["name"] == "args-prompt" and dict(recs[ids[2]].args["arguments"]) == {"city": "Paris"}
    assert recs[ids[4]].args["ref"]["name"] == "completable-prompt"   # the upstream's own name
    subscribed = [r for r in recs.values() if r.tool_name == "resources/subscribe"]
    assert subscribed and subscribed[0].outcome == pb.ALLOW


def test_no_request_reaches_the_upstream_without_an_allow_record(setup: Setup) -> None:
    setup.crashy_log.unlink(missing_ok=True)

    async def run() -> None:
        async with stdio_gateway(setup.config("crashy", file="gw-crashy-seen.yaml")) as gw:
            assert (await gw.read_resource("crashy://readme")).contents[0].text == "crashy's readme"
            assert (await gw.get_prompt("crashy__greet", {"who": "Ana"})).messages[0].content.text == "Hello Ana"
            assert not (await gw.call_tool("crashy__echo", {"text": "hi"})).is_error
            with pytest.raises(MCPError):
                await gw.get_prompt("crashy__other")          # denied: never reaches crashy
            with pytest.raises(MCPError):
                await gw.read_resource("crashy://nothing")    # allowed, the upstream says no such resource

    anyio.run(run)
    seen = seen_upstream(setup)
    assert [s["method"] for s in seen] == ["resources/read", "prompts/get", "tools/call", "resources/read"]
    allowed = [r for r in records(setup, "mcp://crashy") if r.outcome == pb.ALLOW]
    for s in seen:                                             # each one has its ALLOW record
        name = s["params"].get("name") if s["method"] == "tools/call" else s["method"]
        assert any(r.tool_name == name for r in allowed), s
    assert not any(s["params"].get("name") == "other" for s in seen)


def test_pass_through_forwards_without_a_decision(setup: Setup) -> None:
    setup.crashy_log.unlink(missing_ok=True)
    before = len(records(setup, "mcp://crashy"))

    async def run() -> None:
        cfg = setup.config("crashy", file="gw-pass-through.yaml", pass_through=["prompts/get"])
        async with stdio_gateway(cfg) as gw:
            got = await gw.get_prompt("crashy__other", {"who": "Bo"})     # no rule allows it; not asked
            assert got.messages[0].content.text == "Hello Bo" and not ids_of(got)

    anyio.run(run)
    assert len(records(setup, "mcp://crashy")) == before
    assert [s["method"] for s in seen_upstream(setup)] == ["prompts/get"]


def test_prompt_needing_approval_is_forwarded_once_approved(setup: Setup) -> None:
    async def run() -> None:
        async with stdio_gateway(setup.config("everything", approval_wait="60s", file="gw-approve.yaml")) as gw:
            args = {"resourceType": "Text", "resourceId": "2"}
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, approve_when_pending, setup, "prompts/get",
                              {"name": "resource-prompt", "arguments": args})
                got = await gw.get_prompt("everything__resource-prompt", args)
            assert got.messages and len(ids_of(got)) == 2

    anyio.run(run)


def test_decider_killed_every_governed_method_fails_closed(setup: Setup, tmp_path: Path) -> None:
    (tmp_path / "tokens.yaml").write_text((setup.tmp / "tokens.yaml").read_text())
    doomed = start_server(tmp_path, setup.tmp / "bundle", None, "--tokens", str(tmp_path / "tokens.yaml"),
                          name="doomed")
    setup.crashy_log.unlink(missing_ok=True)
    try:
        async def run() -> None:
            cfg = setup.config("crashy", target=doomed.target, deadline="1s", file="gw-killed.yaml")
            async with stdio_gateway(cfg) as gw:
                assert (await gw.read_resource("crashy://readme")).contents    # decider up: served
                doomed.proc.kill()
                doomed.proc.wait(10)
                for attempt in (lambda: gw.read_resource("crashy://readme"),
                                lambda: gw.get_prompt("crashy__greet", {"who": "Ana"})):
                    with pytest.raises(MCPError) as refused:
                        await attempt()
                    assert refused.value.code == POLICY_REFUSED and "fails closed" in refused.value.message
                result = await gw.call_tool("crashy__echo", {"text": "x"})
                assert result.is_error and "fails closed" in result.content[0].text

        anyio.run(run)
    finally:
        doomed.stop()
    assert [s["method"] for s in seen_upstream(setup)] == ["resources/read"]    # only the one decided


def test_configured_costs_are_the_estimate_and_the_reported_actual_cost(setup: Setup) -> None:
    async def run() -> tuple[str, str]:
        cfg = setup.config("time", file="gw-costs.yaml", costs={"time/get_current_time": 0.25})
        async with stdio_gateway(cfg) as gw:
            priced = await gw.call_tool("time__get_current_time", {"timezone": "UTC"})
        async with stdio_gateway(setup.config("time", file="gw-no-costs.yaml")) as gw:
            unpriced = await gw.call_tool("time__get_current_time", {"timezone": "UTC"})
        return ids_of(priced)[0], ids_of(unpriced)[0]

    priced, unpriced = anyio.run(run)
    recs = {r.decision_id: r for r in records(setup, "mcp://time")}
    assert (recs[priced].estimated_cost, recs[priced].actual_cost, recs[priced].outcome_status) == (0.25, 0.25, "ok")
    assert recs[unpriced].estimated_cost == 0.0 and recs[unpriced].outcome_status == "ok"
