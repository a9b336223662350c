"""The console's overview page (issue 28) in a real browser (Debian's Chromium driven by Playwright):
its charts are inline SVG drawn from real decisions, its numbers are `decider report`'s over the
chosen window, it follows new decisions without a reload, and the CSP stays strict."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from decider.v1 import decider_pb2 as pb

from .console_helpers import CHROMIUM_ARGS, ConsoleProcess, ensure_chromium, start_console
from .helpers import ServerProcess, start_server
from .stateful import REFUND_BOT, client, write_bundle, write_tokens
from .test_console import logged_in, screenshot

playwright_sync = pytest.importorskip("playwright.sync_api")
WORKER = {"id": "ov-worker", "team": "ops"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ConsoleProcess]]:
    tmp = tmp_path_factory.mktemp("overview")
    tokens = write_tokens(tmp)
    srv = start_server(tmp, write_bundle(tmp), None, "--tokens", str(tokens), "--poll-interval", "0.2")
    try:
        con = start_console(tmp, srv.target, "--tokens", str(tokens))
        try:
            yield srv, con
        finally:
            con.stop()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = ensure_chromium()
    if path is None:
        pytest.skip("chromium unavailable (tools/scripts/ensure-chromium.sh could not install it)")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _decisions(srv: ServerProcess) -> dict[str, Any]:
    """Real decisions of every kind: allowed with a cost, denied, an approval approved by a person, one
    left to expire, and a kill switch with the call it denied."""
    with client(srv, "gw-token") as c:
        for i in range(5):
            assert c.decide(agent=WORKER, tool="work.read", args={"i": i}, estimated_cost=3.0).outcome == pb.ALLOW
        for i in range(2):
            assert c.decide(agent=WORKER, tool="other.thing", args={"i": i}).outcome == pb.DENY
        asked = c.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 10, "order": "ov-1"})
        quick = c.decide(agent=REFUND_BOT, tool="payments.quick", args={"q": 1})   # approval_ttl: 1s
    assert asked.outcome == quick.outcome == pb.REQUIRE_APPROVAL
    with client(srv, "ana-token") as c:
        c.resolve_approval(asked.decision_id, True)
    with client(srv, "gw-token") as c:
        for _ in range(100):   # bounded: the 1 s approval expires (the server's sweep, --poll-interval 0.2)
            if c.get_decision(quick.decision_id).approval.state == pb.APPROVAL_EXPIRED:
                break
            time.sleep(0.2)
        assert c.get_decision(quick.decision_id).approval.state == pb.APPROVAL_EXPIRED
    with client(srv, "admin-token") as c:
        switch = c.set_kill_switch("agent", "ov-killed", reason="overview test")
    with client(srv, "gw-token") as c:
        for _ in range(50):   # bounded: until the switch is in force (it is at once on this one server)
            killed = c.decide(agent={"id": "ov-killed", "team": "ops"}, tool="work.read", args={})
            if killed.deciding_rule == "killed":
                break
            time.sleep(0.1)
        assert killed.deciding_rule == "killed"
    return {"switch": switch.id}


def test_the_overview_draws_its_charts_from_real_decisions_and_follows_new_ones(stack, browser) -> None:  # noqa: ANN001
    srv, con = stack
    _decisions(srv)
    page = logged_in(browser, con, "admin-token")
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    resp = page.goto(con.url + "/overview?window=15m")
    assert resp is not None and resp.status == 200
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp

    # The chart: one stacked bar segment per outcome that happened, drawn as SVG by the console.
    chart = page.locator("svg#chart-outcomes")
    assert chart.is_visible()
    for outcome in ("allow", "deny", "require_approval"):
        assert page.locator(f"svg#chart-outcomes rect.bar.{outcome}").count() >= 1, outcome
    assert page.locator("svg#chart-outcomes rect.bar").first.bounding_box()["height"] > 0
    # ALLOW: the 5 work calls (the approved refund was not retried, so it has no ALLOW of its own)
    assert page.inner_text("#kpi-allow") == "5"
    assert page.inner_text("#kpi-deny") == "3"            # 2 without a rule + 1 killed
    assert page.inner_text("#kpi-approval") == "2"
    assert page.inner_text("#kpi-human") == "10.0 %"      # 1 of 10 decisions was resolved by a person
    assert re.fullmatch(r"\d+\.\d s / \d+\.\d s", page.inner_text("#kpi-tta"))
    assert page.inner_text("#kpi-expired") == "1 of 2 asked"
    # Spend against each budget: the agent's and the team's, 15.00 reserved by the allowed calls.
    assert page.locator("svg#chart-budgets rect.bar.budget").count() >= 2
    assert "15.00 / 100.00" in (page.text_content("svg#chart-budgets") or "")
    # Kill-switch time to effect: from its creation to the first call it denied.
    row = page.locator("#kill-effect tbody tr", has_text="ov-killed")
    assert re.fullmatch(r"\d+\.\d{3} s", row.locator("td.tte").inner_text())
    screenshot(page, "console-overview.png")

    # Live: new decisions show up without a reload.
    page.evaluate("window.__notReloaded = true")
    with client(srv, "gw-token") as c:
        for i in range(4):
            c.decide(agent=WORKER, tool="other.thing", args={"later": i})
    # (not wait_for_function: its string is eval'd, which the console's CSP refuses, as it should)
    playwright_sync.expect(page.locator("#kpi-deny")).to_have_text("7", timeout=20_000)
    assert page.evaluate("window.__notReloaded") is True
    assert page.locator("svg#chart-outcomes rect.bar.deny").count() >= 1
    assert not [p for p in problems if "Content Security Policy" in p], problems


def test_an_approver_sees_the_overview_without_the_admins_kill_switch_list(stack, browser) -> None:  # noqa: ANN001
    srv, con = stack
    page = logged_in(browser, con, "ana-token")
    resp = page.goto(con.url + "/overview")
    assert resp is not None and resp.status == 200
    assert page.locator("svg#chart-outcomes").is_visible()
    assert "Listing kill switches needs the admin role." in page.inner_text("#kill-effect")


def test_an_unknown_window_is_a_bad_request_naming_the_parameter(stack, browser) -> None:  # noqa: ANN001
    srv, con = stack
    page = logged_in(browser, con, "admin-token")
    resp = page.goto(con.url + "/overview?window=7y")
    assert resp is not None and resp.status == 400
    assert "window: must be one of 15m, 1h, 6h, 24h" in page.inner_text("main")


def test_the_console_opens_on_the_overview(stack, browser, tmp_path: Path) -> None:  # noqa: ANN001
    srv, con = stack
    page = logged_in(browser, con, "admin-token")
    page.goto(con.url + "/")
    assert page.url.endswith("/overview")
    assert page.locator("header nav a").first.inner_text() == "Overview"
