"""The operations console in a real browser (Debian's Chromium driven by Playwright) against a real
console process and a real decider server: log-in, the live approvals queue, approving, role and
CSRF refusals, kill switches, the decision feed and the session timeline."""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from decider.v1 import decider_pb2 as pb

from .console_helpers import CHROMIUM_ARGS, ConsoleProcess, ensure_chromium, start_console
from .helpers import ROOT, ServerProcess, start_server
from .stateful import REFUND_BOT, client, write_bundle, write_tokens

playwright_sync = pytest.importorskip("playwright.sync_api")
IMG = ROOT / "docs" / "img"
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ConsoleProcess]]:
    tmp = tmp_path_factory.mktemp("console")
    tokens = write_tokens(tmp)
    bundle = write_bundle(tmp)
    with (bundle / "bundle.yaml").open("a") as f:   # the queue shows the call as recorded: masked
        f.write("  mask:\n    - tool.args.card_token\n")
    srv = start_server(tmp, bundle, None, "--tokens", str(tokens), "--poll-interval", "0.2")
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
        msg = "\n!!! chromium UNAVAILABLE (tools/scripts/ensure-chromium.sh could not install it): console browser tests SKIPPED"
        print(msg, file=sys.stderr)
        pytest.skip(msg)
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def logged_in(browser: Any, con: ConsoleProcess, token: str) -> Any:
    """A fresh browser context (its own cookies) logged in with `token`; returns its page."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    page.goto(con.url + "/approvals")
    assert page.url.endswith("/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(re.compile(r"/approvals$"))
    return page


def decide(srv: ServerProcess, agent: dict, tool: str, args: dict, cost: float = 0.0) -> pb.DecideResponse:
    with client(srv, "gw-token") as c:
        return c.decide(agent=agent, tool=tool, args=args, estimated_cost=cost)


def form_post(page: Any, path: str, fields: dict[str, str]) -> int:
    """POST a form from inside the page (as a forged or hand-made request would), return the status."""
    return page.evaluate("""async ([path, fields]) => {
        const body = new URLSearchParams(fields);
        const r = await fetch(path, {method: "POST", body, redirect: "manual"});
        return r.status;
    }""", [path, fields])


def screenshot(page: Any, name: str) -> None:
    """Every run takes the screenshot; it replaces the one in docs/img/ (shown in the README) when that
    is missing or DECIDER_UPDATE_SCREENSHOTS=1, so an ordinary test run leaves the work tree clean."""
    png = page.screenshot(full_page=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    target = IMG / name
    if os.environ.get("DECIDER_UPDATE_SCREENSHOTS") == "1" or not target.exists():
        IMG.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png)


def csrf_of(page: Any) -> str:
    return page.get_attribute("form[action='/logout'] input[name=csrf]", "value")


def test_approver_sees_a_pending_approval_appear_live_and_approves_it(stack, browser) -> None:  # noqa: ANN001
    srv, con = stack
    page = logged_in(browser, con, "ana-token")
    page.evaluate("window.__notReloaded = true")
    agent = {**REFUND_BOT, "session_id": "sess-approve"}
    decide(srv, agent, "work.read", {"path": "/orders/o-9"})
    other = decide(srv, {**REFUND_BOT, "session_id": "sess-other"}, "payments.refund",
                   {"amount": 1800, "order": "o-8", "card_token": "tok_live_x"})
    pending = decide(srv, agent, "payments.refund", {"amount": 2500, "order": "o-9", "reason": "damaged"})
    assert pending.outcome == pb.REQUIRE_APPROVAL
    # The enforcement point waits on WatchDecision, as a gateway does.
    seen: queue.Queue[pb.DecisionRecord] = queue.Queue()
    watcher = client(srv, "gw-token")
    stream = watcher.watch_decision(pending.decision_id, timeout=60)

    def watch() -> None:
        try:
            for rec in stream:
                seen.put(rec)
        except grpc.RpcError:
            pass

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        approve = page.locator(f"button.approve[data-decision-id='{pending.decision_id}']")
        approve.wait_for()                                             # pushed, not reloaded:
        assert page.evaluate("window.__notReloaded") is True
        card = page.locator(f"#approval-{pending.decision_id}")
        assert "payments.refund" in card.inner_text() and "refunds-need-finance" in card.inner_text()
        assert "Refunds need a finance approver" in card.inner_text()
        assert '"order": "o-9"' in card.locator("pre.args").inner_text()
        assert card.locator("a.session-link").get_attribute("href") == "/sessions/sess-approve"
        assert re.search(r"expires in (\d+h )?\d+m \d+s", card.locator(".countdown").inner_text())
        other_args = page.locator(f"#approval-{other.decision_id} pre.args").inner_text()
        assert '"card_token": "[masked]"' in other_args and "tok_live_x" not in page.content()
        # Oldest first.
        ids = page.eval_on_selector_all("#queue article.approval", "els => els.map(e => e.dataset.decisionId)")
        assert ids.index(other.decision_id) < ids.index(pending.decision_id)
        screenshot(page, "console-approvals.png")
        card.locator("input[name=comment]").fill("checked the order, damaged on arrival")
        approve.click()
        page.wait_for_url(re.compile(r"/approvals\?msg="))
        assert f"{pending.decision_id} approved" in page.inner_text("#msg")
        assert page.locator(f"#approval-{pending.decision_id}").count() == 0
        states = []
        while not states or states[-1].approval.state == pb.APPROVAL_PENDING:
            states.append(seen.get(timeout=20))
        assert states[-1].approval.state == pb.APPROVAL_APPROVED
        assert states[-1].approval.resolved_by == "user:ana"
        assert states[-1].approval.comment == "checked the order, damaged on arrival"
    finally:
        stream.cancel()
        t.join(10)
        watcher.close()
        page.context.close()


def test_a_resolved_approval_leaves_the_queue_of_every_open_console(stack, browser) -> None:  # noqa: ANN001
    srv, con = stack
    ana = logged_in(browser, con, "ana-token")
    carol = logged_in(browser, con, "carol-token")
    try:
        pending = decide(srv, REFUND_BOT, "payments.refund", {"amount": 4000, "order": "o-both"})
        for page in (ana, carol):
            page.locator(f"#approval-{pending.decision_id}").wait_for()
        with client(srv, "carol-token") as c:   # resolved elsewhere (the CLI, another console)
            c.resolve_approval(pending.decision_id, approve=False, comment="duplicate")
        for page in (ana, carol):
            page.locator(f"#approval-{pending.decision_id}").wait_for(state="detached")
    finally:
        ana.context.close()
        carol.context.close()


def test_a_non_approver_sees_no_approve_button_and_a_forged_post_is_refused(stack, browser) -> None:  # noqa: ANN001
    srv, con = stack
    pending = decide(srv, REFUND_BOT, "payments.refund", {"amount": 3100, "order": "o-forged"})
    page = logged_in(browser, con, "admin-token")   # user:root: admin, not approver
    try:
        card = page.locator(f"#approval-{pending.decision_id}")
        card.wait_for()
        assert page.locator("button.approve").count() == 0 and page.locator("button.reject").count() == 0
        assert "only the approver role can resolve" in page.inner_text("main")
        status = form_post(page, f"/approvals/{pending.decision_id}/resolve",
                           {"csrf": csrf_of(page), "resolution": "approve", "comment": "forged"})
        assert status == 403
    finally:
        page.context.close()
    with client(srv, "ana-token") as c:
        assert c.get_decision(pending.decision_id).approval.state == pb.APPROVAL_PENDING


def test_a_post_without_the_csrf_token_is_refused(stack, browser) -> None:  # noqa: ANN001
    srv, con = stack
    pending = decide(srv, REFUND_BOT, "payments.refund", {"amount": 3200, "order": "o-csrf"})
    page = logged_in(browser, con, "ana-token")
    try:
        path = f"/approvals/{pending.decision_id}/resolve"
        assert form_post(page, path, {"resolution": "approve"}) == 403
        assert form_post(page, path, {"resolution": "approve", "csrf": "guessed"}) == 403
        assert form_post(page, "/kill-switches", {"scope": "platform", "reason": "no csrf"}) == 403
    finally:
        page.context.close()
    with client(srv, "ana-token") as c:
        assert c.get_decision(pending.decision_id).approval.state == pb.APPROVAL_PENDING
    with client(srv, "admin-token") as c:
        assert c.list_kill_switches() == []


def test_a_kill_switch_engaged_from_the_ui_denies_the_next_decide(stack, browser) -> None:  # noqa: ANN001
    srv, con = stack
    agent = {**REFUND_BOT, "id": "runaway-bot"}
    assert decide(srv, agent, "work.read", {}).outcome == pb.ALLOW
    page = logged_in(browser, con, "admin-token")
    try:
        page.goto(con.url + "/kill-switches")
        page.select_option("#scope", "agent")
        page.fill("#value", "runaway-bot")
        page.fill("#reason", "looping on refunds")
        page.click("#engage")
        page.wait_for_url(re.compile(r"/kill-switches\?msg="))
        assert "engaged agent runaway-bot" in page.inner_text("#msg")
        row = page.locator("#switches tr", has_text="runaway-bot")
        assert "looping on refunds" in row.inner_text() and "user:root" in row.inner_text()
        denied = decide(srv, agent, "work.read", {})
        assert denied.outcome == pb.DENY and denied.reasons[0].rule_id == "killed"
        assert decide(srv, {**agent, "id": "calm-bot"}, "work.read", {}).outcome == pb.ALLOW
        row.locator("button.release").click()
        page.wait_for_url(re.compile(r"/kill-switches\?msg="))
        assert "released agent runaway-bot" in page.inner_text("#msg")
        assert decide(srv, agent, "work.read", {}).outcome == pb.ALLOW
    finally:
        page.context.close()


def test_the_session_timeline_shows_a_scripted_sessions_calls_in_order(stack, browser) -> None:  # noqa: ANN001
    srv, con = stack
    agent = {**REFUND_BOT, "session_id": "sess-timeline-7", "labels": {"channel": "email"}}
    script = [("work.read", {"path": "/tickets/T-1"}, pb.ALLOW),
              ("work.lookup_order", {"order": "o-77"}, pb.ALLOW),
              ("payments.refund", {"amount": 2500, "order": "o-77"}, pb.REQUIRE_APPROVAL),
              ("email.send", {"to": "customer@example.com"}, pb.DENY),
              ("work.write", {"path": "/tickets/T-1", "note": "refund pending"}, pb.ALLOW)]
    made = []
    for tool, args, expected in script:
        resp = decide(srv, agent, tool, args, cost=1.5)
        assert resp.outcome == expected
        made.append(resp.decision_id)
    with client(srv, "gw-token") as c:
        c.report_outcome(made[0], 1.25, "ok")
    page = logged_in(browser, con, "ana-token")
    try:
        page.goto(con.url + "/sessions/sess-timeline-7")
        steps = page.locator("#timeline li.step")
        assert steps.count() == len(script)
        assert page.eval_on_selector_all("#timeline li.step", "els => els.map(e => e.dataset.decisionId)") == made
        assert [steps.nth(i).locator(".tool").inner_text() for i in range(len(script))] == [s[0] for s in script]
        assert [steps.nth(i).locator(".outcome").inner_text() for i in range(len(script))] == [
            pb.Outcome.Name(s[2]) for s in script]
        assert "approval pending" in steps.nth(2).inner_text()
        assert "cost 1.25 (ok)" in steps.nth(0).inner_text() and "cost 1.5" in steps.nth(1).inner_text()
        assert "channel=email" in steps.nth(0).inner_text()
        screenshot(page, "console-session-timeline.png")
        # One page per decision, with everything GetDecision has.
        steps.nth(2).locator("a", has_text="details").click()
        page.wait_for_url(re.compile(f"/decisions/{made[2]}$"))
        text = page.inner_text("main")
        for expected in ("REQUIRE_APPROVAL", "refunds-need-finance", "controls-test", "group:finance-oncall",
                         "sess-timeline-7", '"amount": 2500'):
            assert expected in text
        assert page.locator(f"button.approve[data-decision-id='{made[2]}']").count() == 1   # resolvable here too
    finally:
        page.context.close()


def test_the_live_decision_feed_shows_new_decisions_that_match_its_filters(stack, browser) -> None:  # noqa: ANN001
    srv, con = stack
    page = logged_in(browser, con, "ana-token")
    try:
        page.goto(con.url + "/decisions?agent=feed-bot&outcome=ALLOW")
        page.locator("#live-status").wait_for()
        page.wait_for_function("document.querySelector('#feed').dataset.events.includes('agent=feed-bot')")
        page.wait_for_timeout(500)   # let the event stream open (the ids below decide the assertions)
        other = decide(srv, {**REFUND_BOT, "id": "other-bot"}, "work.read", {})
        denied = decide(srv, {**REFUND_BOT, "id": "feed-bot"}, "nothing.matches", {})
        allowed = decide(srv, {**REFUND_BOT, "id": "feed-bot"}, "work.read", {"n": 1})
        page.locator(f"#feed tr[data-decision-id='{allowed.decision_id}']").wait_for()
        assert page.locator(f"#feed tr[data-decision-id='{denied.decision_id}']").count() == 0
        assert page.locator(f"#feed tr[data-decision-id='{other.decision_id}']").count() == 0
        page.click(f"#feed tr[data-decision-id='{allowed.decision_id}'] a")
        page.wait_for_url(re.compile(f"/decisions/{allowed.decision_id}$"))
        assert "work-allowed" in page.inner_text("main")
    finally:
        page.context.close()


def test_login_cookie_is_httponly_samesite_strict_and_logout_ends_the_session(stack, browser) -> None:  # noqa: ANN001
    srv, con = stack
    ctx = browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    try:
        page.goto(con.url + "/login")
        page.fill("#token", "not-a-token")
        page.click("#login")
        assert "Unknown token" in page.inner_text("#login-error")
        page.fill("#token", "carol-token")
        page.click("#login")
        page.wait_for_url(re.compile(r"/approvals$"))
        assert "carol-token" not in page.url
        cookie = next(c for c in ctx.cookies() if c["name"] == "decider_console")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["secure"] is False
        assert "carol-token" not in cookie["value"]          # encrypted, not merely encoded
        assert page.evaluate("document.cookie") == ""         # no script can read it
        assert "user:carol" in page.inner_text("header")
        page.click("#logout")
        page.wait_for_url(re.compile(r"/login$"))
        page.goto(con.url + "/approvals")
        assert page.url.endswith("/login")
    finally:
        ctx.close()
    log = con.log()
    for token in ("ana-token", "carol-token", "admin-token"):
        assert token not in log


def test_bundles_and_budgets_pages_show_what_decider_reports_by_role(stack, browser) -> None:  # noqa: ANN001
    srv, con = stack
    decide(srv, {**REFUND_BOT, "id": "budget-bot", "team": "budget-team"}, "work.buy", {}, cost=40.0)
    admin = logged_in(browser, con, "admin-token")
    ana = logged_in(browser, con, "ana-token")
    try:
        admin.goto(con.url + "/bundles")
        assert "controls-test 1.0.0" in admin.inner_text("#active-bundle")
        assert admin.inner_text("#shadow-bundle") == "none"
        assert admin.locator("#rollback").count() == 1          # admins may roll back
        admin.goto(con.url + "/budgets")
        row = admin.locator("#budgets tr", has_text="budget-team")
        assert re.search(r"team\s+budget-team\s+1d\s+\S+\s+0\.00\s+40\.00\s+1000\.00\s+960\.00", row.inner_text())
        resp = ana.goto(con.url + "/bundles")                     # decider refuses an approver: so does the console
        assert resp.status == 403 and "needs role admin" in ana.inner_text("#error-message")
    finally:
        admin.context.close()
        ana.context.close()


def test_an_admin_sees_the_shadow_diff_activates_the_shadow_revision_and_rolls_back(tmp_path: Path,
                                                                                   browser) -> None:  # noqa: ANN001
    tokens = write_tokens(tmp_path)
    active = write_bundle(tmp_path)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "bundle.yaml").write_text((active / "bundle.yaml").read_text().replace("1.0.0", "2.0.0"))
    (shadow / "controls.yaml").write_text((active / "controls.yaml").read_text().replace(
        "    - id: work-allowed", "    - id: no-deletes\n      effect: deny\n      when: tool.name == \"work.delete\"\n"
        "    - id: work-allowed"))
    srv = start_server(tmp_path, active, None, "--tokens", str(tokens), "--shadow-bundle", str(shadow),
                       "--poll-interval", "0.2")
    try:
        con = start_console(tmp_path, srv.target, "--tokens", str(tokens))
        try:
            changed = decide(srv, REFUND_BOT, "work.delete", {"path": "/tmp/x"})
            decide(srv, REFUND_BOT, "work.read", {})
            page = logged_in(browser, con, "admin-token")
            page.goto(con.url + "/bundles")
            assert "controls-test 1.0.0" in page.inner_text("#active-bundle")
            assert "controls-test 2.0.0" in page.inner_text("#shadow-bundle")
            text = page.inner_text("main")
            assert "2 recent decisions had a shadow outcome; 1 would change." in text
            assert f"{changed.decision_id} work.delete: ALLOW → DENY" in text
            v2 = page.locator("button.activate").get_attribute("data-revision")
            page.click("button.activate")
            page.wait_for_url(re.compile(r"/bundles\?msg="))
            assert f"activated {v2[:12]}" in page.inner_text("#msg")
            assert "controls-test 2.0.0" in page.inner_text("#active-bundle")
            assert decide(srv, REFUND_BOT, "work.delete", {"path": "/tmp/y"}).outcome == pb.DENY
            page.click("#rollback")
            page.wait_for_url(re.compile(r"/bundles\?msg="))
            assert "rolled back to" in page.inner_text("#msg")
            assert "controls-test 1.0.0" in page.inner_text("#active-bundle")
            assert decide(srv, REFUND_BOT, "work.delete", {"path": "/tmp/z"}).outcome == pb.ALLOW
            page.context.close()
        finally:
            con.stop()
    finally:
        srv.stop()
