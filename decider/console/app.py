"""The console's web app (Starlette): pages, actions and live event streams over decider's API.

Every page is read from decider with the session's token; every action is a POST carrying the
session's CSRF token, and decider alone decides whether the user may do it (its refusal is the
console's: PERMISSION_DENIED → 403). Nothing is stored here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from decider.console.api import ApiError, DeciderApi
from decider.console.config import ConsoleConfig
from decider.console.hosts import LoopbackHostOnly
from decider.console.login_limit import LoginLimiter, retry_after
from decider.console.overview import MAX_RECORDS, WINDOWS, parse_time
from decider.console.overview import overview as overview_of
from decider.console.sessions import COOKIE, Session, SessionCodec, load_secret
from decider.console.streams import Problem, SharedApprovals, SlotStream, StreamSlots
from decider.console.views import OUTCOMES, budget_view, bundle_view, kill_view, record_view
from decider.engine.state import KILL_SCOPES
from decider.v1 import decider_pb2 as pb

__all__ = ["build_app"]

log = logging.getLogger("decider.console")
HERE = Path(__file__).resolve().parent
MAX_FORM_FIELD = 4096
MAX_TOKEN = 1024   # the token rides in the session cookie, and browsers keep cookies under 4 KB
SECURITY_HEADERS = {
    # Scripts and styles only from the console itself: a value shown on a page (tool arguments are
    # attacker-controlled) can never run as script, even if escaping were missed somewhere.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[Request, Session], Awaitable[Response]]


class Console:
    def __init__(self, cfg: ConsoleConfig) -> None:
        self.cfg = cfg
        self.codec = SessionCodec(load_secret(cfg.secret_file), cfg.session_hours * 3600)
        self.secure = bool(cfg.tls_cert)
        self.login_limit = LoginLimiter(cfg.login_attempts, cfg.login_window_s)
        self.slots = StreamSlots(cfg.max_streams)
        self.approval_feed: SharedApprovals | None = None   # made with the API client, in the lifespan
        self.tokens = None
        if cfg.tokens:
            from decider.server.auth import load_token_file  # the same file format and checks as the server

            self.tokens = load_token_file(cfg.tokens)
        self.api: DeciderApi | None = None
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                            autoescape=True, undefined=jinja2.StrictUndefined)

    # ---- plumbing ------------------------------------------------------------------------------
    def render(self, name: str, session: Session, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = self.templates.get_template(name).render(
            session=session, login_required=self.tokens is not None or bool(session.token), **ctx)
        return HTMLResponse(html, status_code=status)

    def fragment(self, name: str, **ctx: Any) -> str:
        return self.templates.get_template(name).render(**ctx)

    def _cookie(self, resp: Response, session: Session) -> None:
        resp.set_cookie(COOKIE, self.codec.encode(session), max_age=int(self.codec.ttl_s), httponly=True,
                        samesite="strict", secure=self.secure, path="/")

    def page(self, handler: Handler, *, login: bool = True, post: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler: session from the cookie, log-in and CSRF checks, decider's refusals as statuses."""
        async def endpoint(request: Request) -> Response:
            session = self.codec.decode(request.cookies.get(COOKIE))
            fresh = session is None
            if session is None:
                session = Session()
            if post:
                form = await request.form()
                sent = form.get("csrf")
                if not session.csrf_ok(sent if isinstance(sent, str) else None):
                    resp: Response = self.render("error.html", session, 403, title="Refused",
                                                 message="The form's CSRF token is missing or wrong. Reload the page "
                                                         "and try again.")
                    return self._with(resp, session, fresh)
            if login and not session.logged_in:
                needs_login = self.tokens is not None
                if not needs_login:
                    try:
                        session = await self._open_session(session)
                        fresh = True
                    except ApiError as e:
                        if e.status != 401:
                            return self._with(self.render("error.html", session, e.status,
                                                          title="decider is not available", message=e.message),
                                              session, fresh)
                        # decider has tokens though this console was given no token file: log in with a
                        # token, which decider itself checks (issue 28: this was a 502 on every page).
                        needs_login = True
                if needs_login and (post or request.url.path.startswith("/events/")):
                    return self._with(PlainTextResponse("log in first", status_code=401), session, fresh)
                if needs_login:
                    return self._with(RedirectResponse("/login", status_code=303), session, fresh)
            try:
                resp = await handler(request, session)
            except ApiError as e:
                if e.status == 401 and (self.tokens is not None or session.token):
                    # The token was withdrawn from decider's file: this session is over.
                    return self._with(RedirectResponse("/login", status_code=303), Session(), True)
                resp = self.render("error.html", session, e.status, title=f"decider said {e.code.name}",
                                   message=e.message)
            return self._with(resp, session, fresh)
        return endpoint

    def _with(self, resp: Response, session: Session, fresh: bool) -> Response:
        if fresh:
            self._cookie(resp, session)
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp

    async def _open_session(self, session: Session, token: str = "") -> Session:
        assert self.api is not None
        me = await self.api.whoami(token)
        # A new CSRF token at log-in: one planted before it (session fixation) is worthless after.
        return Session(token=token, principal=me.principal or "anonymous", roles=tuple(me.roles))

    # ---- log-in ----------------------------------------------------------------------------------
    async def _decider_is_open(self) -> bool:
        """Whether decider answers without a token (a server without a token file)."""
        assert self.api is not None
        try:
            await self.api.whoami("")
        except ApiError as e:
            if e.status == 401:
                return False
            raise
        return True

    async def login_form(self, request: Request, session: Session) -> Response:
        if session.logged_in or (self.tokens is None and await self._decider_is_open()):
            return RedirectResponse("/approvals", status_code=303)
        return self.render("login.html", session, error="")

    async def login(self, request: Request, session: Session) -> Response:
        peer = request.client.host if request.client else ""
        # First of all, before the token is read or checked: a refused try tells nothing about it.
        wait = self.login_limit.take(peer)
        if wait:
            log.warning("console log-in rate-limited", extra={"peer": peer, "retry_after_s": round(wait, 1)})
            limited = self.render("login.html", session, 429, error="Too many log-in attempts from your address; "
                                                                    f"try again in {retry_after(wait)} s.")
            limited.headers["Retry-After"] = retry_after(wait)
            return limited
        form = await request.form()
        token = str(form.get("token") or "").strip()
        if self.tokens is None and await self._decider_is_open():
            return RedirectResponse("/approvals", status_code=303)
        # With the token file an unknown token is refused here, before it reaches decider; without
        # it, decider's own answer to WhoAmI with the token decides.
        if not token or len(token) > MAX_TOKEN or (self.tokens is not None and self.tokens.authenticate(token) is None):
            log.warning("console log-in refused", extra={"peer": request.client.host if request.client else ""})
            return self.render("login.html", session, 401, error="Unknown token.")
        try:
            new = await self._open_session(session, token)
        except ApiError as e:
            if e.status == 401 and self.tokens is None:
                log.warning("console log-in refused", extra={"peer": request.client.host if request.client else ""})
                return self.render("login.html", session, 401, error="Unknown token.")
            return self.render("login.html", session, 401 if e.status == 401 else e.status,
                               error=f"decider refused this token: {e.message}")
        log.info("console log-in", extra={"principal": new.principal})
        resp = RedirectResponse("/approvals", status_code=303)
        self._cookie(resp, new)
        self.login_limit.refund(peer)   # a log-in that worked gives its try back
        return resp

    async def logout(self, request: Request, session: Session) -> Response:
        resp = RedirectResponse("/login" if self.tokens is not None or session.token else "/approvals",
                                status_code=303)
        self._cookie(resp, Session())
        # Revoked here, not only cleared in this browser: a copy of the cookie is refused from now on.
        self.codec.revoke(session)
        if session.logged_in:
            log.info("console log-out", extra={"principal": session.principal})
        return resp

    # ---- approvals -------------------------------------------------------------------------------
    async def approvals(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        pending = [record_view(r) for r in await self.api.pending(session.token)]
        return self.render("approvals.html", session, pending=pending, msg=request.query_params.get("msg", ""),
                           can_resolve=session.has_role("approver"))

    async def approval_events(self, request: Request, session: Session) -> Response:
        assert self.approval_feed is not None
        shared = self.approval_feed
        can_resolve = session.has_role("approver")

        async def events() -> AsyncIterator[str]:
            known: list[str] = []
            seen = 0
            async with shared.watch(session.token) as poll:
                joined = poll.started   # nothing fetched before this stream's page was
                while True:
                    seen, pending = await poll.after(seen, joined)
                    if isinstance(pending, Problem):
                        yield sse("problem", pending.message)
                        continue
                    ids = [r.decision_id for r in pending]
                    had = set(known)
                    for r in pending:
                        if r.decision_id not in had:
                            yield sse("add", self.fragment("_approval.html", a=record_view(r), session=session,
                                                            can_resolve=can_resolve))
                    if ids != known:
                        yield sse("queue", json.dumps(ids))
                        known = ids
                    else:
                        yield ": still here\n\n"   # also how a closed browser is noticed
        return self.stream(session, events())

    def stream(self, session: Session, events: AsyncIterator[str]) -> Response:
        """An event stream, if this session has a stream slot free (StreamSlots); 429 otherwise."""
        if not self.slots.take(session.sid):
            log.warning("console event stream refused: too many open", extra={
                "principal": session.principal, "limit": self.slots.limit})
            return PlainTextResponse(f"too many open event streams for this session (at most {self.slots.limit}); "
                                     "close a console tab", status_code=429, headers={"Retry-After": "5"})
        return SlotStream(events, lambda: self.slots.give_back(session.sid), media_type="text/event-stream",
                          headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def resolve(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        decision_id = request.path_params["decision_id"]
        form = await request.form()
        resolution = form.get("resolution")
        comment = str(form.get("comment") or "")
        if resolution not in ("approve", "reject"):
            return self.render("error.html", session, 400, title="Bad request",
                               message="resolution: must be approve or reject")
        if len(comment) > MAX_FORM_FIELD:
            return self.render("error.html", session, 400, title="Bad request",
                               message=f"comment: longer than {MAX_FORM_FIELD} characters")
        rec = await self.api.resolve(session.token, decision_id, resolution == "approve", comment)
        state = record_view(rec)["approval"]["state"]
        return RedirectResponse("/approvals?" + urlencode({"msg": f"{decision_id} {state}"}), status_code=303)

    # ---- decisions -------------------------------------------------------------------------------
    def _filter(self, request: Request) -> tuple[pb.DecisionFilter, dict[str, str]]:
        q = request.query_params
        chosen = {k: q.get(k, "").strip()[:256] for k in ("agent", "team", "tool", "outcome", "rule")}
        outcome = chosen["outcome"].upper()
        if outcome and outcome not in OUTCOMES:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"outcome: must be one of {', '.join(OUTCOMES)}")
        f = pb.DecisionFilter(agent_id=chosen["agent"], team=chosen["team"], tool_name=chosen["tool"],
                              rule_id=chosen["rule"], outcome=pb.Outcome.Value(outcome) if outcome else 0)
        return f, chosen

    async def decisions(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        f, chosen = self._filter(request)
        resp = await self.api.list_decisions(session.token, f, limit=50, newest_first=True)
        rows = [record_view(r) for r in resp.decisions]
        query = urlencode({k: v for k, v in chosen.items() if v})
        return self.render("decisions.html", session, rows=rows, chosen=chosen, outcomes=OUTCOMES, query=query)

    async def decision_events(self, request: Request, session: Session) -> Response:
        api = self.api
        assert api is not None
        f, _ = self._filter(request)

        async def events() -> AsyncIterator[str]:
            try:
                async for rec in api.watch_decisions(session.token, f):
                    yield sse("decision", self.fragment("_decision_row.html", d=record_view(rec)))
            except ApiError as e:
                yield sse("problem", e.message)
        return self.stream(session, events())

    async def decision(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        rec = await self.api.get(session.token, request.path_params["decision_id"])
        return self.render("decision.html", session, d=record_view(rec), can_resolve=session.has_role("approver"))

    async def session_timeline(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        session_id = request.path_params["session_id"]
        rows: list[dict[str, Any]] = []
        after = ""
        for _ in range(10):   # at most 10 pages of 1000: a longer session is cut, and says so
            resp = await self.api.list_decisions(session.token, pb.DecisionFilter(session_id=session_id),
                                                 limit=1000, after_id=after)
            rows += [record_view(r) for r in resp.decisions]
            if len(resp.decisions) < 1000:
                break
            after = resp.next_after_id
        # What the calls that ran cost: actual where reported, else the estimate.
        total_cost = sum(r["actual_cost"] if r["outcome_status"] else r["estimated_cost"]
                         for r in rows if r["outcome"] == "ALLOW")
        return self.render("session.html", session, session_id=session_id, rows=rows, total_cost=total_cost,
                           truncated=len(rows) >= 10_000)

    # ---- overview --------------------------------------------------------------------------------
    async def overview(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        window = request.query_params.get("window", "1h")
        if window not in WINDOWS:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"window: must be one of {', '.join(WINDOWS)}")
        now = datetime.now(timezone.utc)
        start = now - WINDOWS[window][0]
        records: list[dict[str, Any]] = []
        before, truncated = "", False
        while True:   # newest first, page by page, until the window's start (bounded by MAX_RECORDS)
            resp = await self.api.list_decisions(session.token, pb.DecisionFilter(), limit=1000,
                                                 newest_first=True, before_id=before)
            page = [record_view(r) for r in resp.decisions]
            records += page
            if len(page) < 1000 or (page and (parse_time(page[-1]["time"]) or now) < start):
                break
            if len(records) >= MAX_RECORDS:
                truncated = True
                break
            before = page[-1]["id"]
        budgets = await self.api.budgets(session.token)
        try:
            switches: list[pb.KillSwitch] | None = await self.api.kill_switches(session.token, include_cleared=True)
        except ApiError as e:
            if e.status != 403:
                raise
            switches = None   # listing kill switches is the admin's; an approver sees the rest
        data = overview_of(records, [kill_view(k) for k in switches or []], [budget_view(b) for b in budgets],
                           window, now, truncated)
        return self.render("overview.html", session, o=data, kill_listed=switches is not None)

    # ---- kill switches ---------------------------------------------------------------------------
    async def kill_switches(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        switches = [kill_view(k) for k in await self.api.kill_switches(session.token)]
        return self.render("kill_switches.html", session, switches=switches, scopes=KILL_SCOPES,
                           msg=request.query_params.get("msg", ""))

    async def engage(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        form = await request.form()
        scope, value, reason = (str(form.get(k) or "").strip() for k in ("scope", "value", "reason"))
        if len(value) > MAX_FORM_FIELD or len(reason) > MAX_FORM_FIELD:
            return self.render("error.html", session, 400, title="Bad request", message="value or reason too long")
        ks = await self.api.engage(session.token, scope, value, reason)
        return RedirectResponse("/kill-switches?" + urlencode({"msg": f"engaged {ks.scope} {ks.value}".strip()}),
                                status_code=303)

    async def release(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        ks = await self.api.release(session.token, request.path_params["switch_id"])
        return RedirectResponse("/kill-switches?" + urlencode({"msg": f"released {ks.scope} {ks.value}".strip()}),
                                status_code=303)

    # ---- bundles and budgets ---------------------------------------------------------------------
    async def bundles(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        status, listing, diff = await asyncio.gather(self.api.status(session.token), self.api.bundles(session.token),
                                                     self.api.shadow_diff(session.token))
        history = sorted((bundle_view(b) for b in listing), key=lambda b: b["loaded_at"], reverse=True)
        counts = [{"outcome": pb.Outcome.Name(c.outcome), "shadow": pb.Outcome.Name(c.shadow_outcome),
                   "count": c.count} for c in diff.counts]
        return self.render("bundles.html", session, active=bundle_view(status.active),
                           shadow=bundle_view(status.shadow) if status.shadow.revision else None,
                           reload_error=status.last_reload_error, history=history,
                           diff={"compared": diff.compared, "changed": diff.changed, "counts": counts,
                                 "examples": [record_view(r) for r in diff.examples]},
                           is_admin=session.has_role("admin"), msg=request.query_params.get("msg", ""))

    async def activate(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        form = await request.form()
        info = await self.api.activate(session.token, str(form.get("revision") or "")[:128])
        return RedirectResponse("/bundles?" + urlencode({"msg": f"activated {info.revision[:12]}"}), status_code=303)

    async def rollback(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        info = await self.api.rollback(session.token)
        return RedirectResponse("/bundles?" + urlencode({"msg": f"rolled back to {info.revision[:12]}"}),
                                status_code=303)

    async def budgets(self, request: Request, session: Session) -> Response:
        assert self.api is not None
        rows = [budget_view(b) for b in await self.api.budgets(session.token)]
        return self.render("budgets.html", session, budgets=rows)


def sse(event: str, data: str) -> str:
    """One server-sent event; a multi-line payload becomes several `data:` lines."""
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in data.splitlines() or [""]) + "\n"


def build_app(cfg: ConsoleConfig) -> Starlette:
    c = Console(cfg)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        c.api = DeciderApi(cfg.decider, ca=cfg.decider_ca, cert=cfg.decider_cert, key=cfg.decider_key)
        c.approval_feed = SharedApprovals(c.api.pending, cfg.approvals_poll_s,
                                          lambda e: e.message if isinstance(e, ApiError) else None)
        try:
            yield
        finally:
            await c.api.close()

    async def home(request: Request) -> Response:
        return RedirectResponse("/overview", status_code=303)   # the first page an operator sees

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    p = c.page
    routes = [
        Route("/", home),
        Route("/healthz", healthz),
        Route("/login", p(c.login_form, login=False), methods=["GET"]),
        Route("/login", p(c.login, login=False, post=True), methods=["POST"]),
        Route("/logout", p(c.logout, login=False, post=True), methods=["POST"]),
        Route("/overview", p(c.overview)),
        Route("/approvals", p(c.approvals)),
        Route("/approvals/{decision_id}/resolve", p(c.resolve, post=True), methods=["POST"]),
        Route("/events/approvals", p(c.approval_events)),
        Route("/decisions", p(c.decisions)),
        Route("/decisions/{decision_id}", p(c.decision)),
        Route("/events/decisions", p(c.decision_events)),
        Route("/sessions/{session_id}", p(c.session_timeline)),
        Route("/kill-switches", p(c.kill_switches)),
        Route("/kill-switches", p(c.engage, post=True), methods=["POST"]),
        Route("/kill-switches/{switch_id}/release", p(c.release, post=True), methods=["POST"]),
        Route("/bundles", p(c.bundles)),
        Route("/bundles/activate", p(c.activate, post=True), methods=["POST"]),
        Route("/bundles/rollback", p(c.rollback, post=True), methods=["POST"]),
        Route("/budgets", p(c.budgets)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    # Without tokens, only loopback Host names (console/hosts.py: DNS rebinding); with tokens a
    # rebound origin has no session cookie, the cookie being bound to the console's own name.
    middleware = [Middleware(LoopbackHostOnly)] if c.tokens is None else []
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    # Starlette answers `/approvals/` with an absolute redirect built from the Host header; every
    # redirect the console gives is relative, so a trailing slash is simply not found.
    app.router.redirect_slashes = False
    return app
