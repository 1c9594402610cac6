"""The dashboard: server-rendered pages over the state store (pipeline, needs attention, clients,
AR aging, cash forecast, leakage, audit log) and the admin's actions (retry, approve, void).

Pages read through the unit of work and the read models in connector/reports.py; actions call the
SyncService use cases. Forms carry CSRF tokens signed with itsdangerous and bound to a cookie;
off loopback, every page needs the token `[server] dashboard_token_env` names."""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode
from zoneinfo import ZoneInfo

import jinja2
import structlog
from babel.numbers import format_currency
from itsdangerous import BadData, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from connector import reports
from connector.config import ServerConfig
from connector.domain.errors import ConfigError, InvariantViolation, RejectedError, TransientError
from connector.domain.ids import ClientKey, MilestoneKey
from connector.domain.model import MilestoneState
from connector.domain.money import Money
from connector.ports import PaymentGateway, PhaseStatus, SavedMethod, UnitOfWork

if TYPE_CHECKING:
    from scheduler.bootstrap import App

log = structlog.get_logger("milestone_sync.dashboard")

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

SESSION_COOKIE = "ms_session"  # proof the browser gave the token once (signed, no token inside)
CSRF_COOKIE = "ms_csrf"  # the random value the forms' signed tokens are bound to
CSRF_FIELD = "csrf_token"
SESSION_MAX_AGE = 12 * 3600
CSRF_MAX_AGE = 8 * 3600  # a form left open longer asks for a reload
NOTE_MAX_AGE = 120  # the message shown after an action, signed so no link can forge one
MAX_FORM_BYTES = 64 * 1024
METHOD_CACHE_SECONDS = 300.0  # saved methods change rarely; a page never waits on many calls
AUDIT_LIMIT = 300

PAGES = {
    "/": "Pipeline",
    "/attention": "Needs attention",
    "/clients": "Clients",
    "/aging": "AR aging",
    "/forecast": "Cash forecast",
    "/leakage": "Leakage",
    "/audit": "Audit log",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the names that always mean this machine."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def dashboard_url(server: ServerConfig) -> str:
    """Where a person on this machine opens the dashboard (a wildcard bind is reached on
    127.0.0.1)."""
    host = server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.port}/"


def dashboard_token(server: ServerConfig) -> str | None:
    """The token `[server] dashboard_token_env` names, if that variable is set."""
    if not server.dashboard_token_env:
        return None
    return os.environ.get(server.dashboard_token_env) or None


# --------------------------------------------------------------------------- formatting


def money(value: Money | None) -> str:
    if value is None:
        return "—"
    return str(format_currency(value.amount, value.currency, locale="en_US"))


def totals(value: reports.Totals) -> str:
    if not value.amounts:
        return "—"
    return " + ".join(money(m) for m in value.amounts)


def day(value: date | datetime | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return value.isoformat()


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails the tests, not silently
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = money
    env.filters["totals"] = totals
    env.filters["day"] = day
    return env


# --------------------------------------------------------------------------- forecast chart


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str  # collected | invoiced | planned
    title: str


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    """An SVG chart's geometry: the only place money becomes a float, to be drawn."""

    width: int
    height: int
    left: int
    top: int
    plot_height: int
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    labels: tuple[tuple[float, str], ...]  # x, week label
    today_x: float
    baseline: float


def forecast_chart(forecast: reports.Forecast, width: int = 880, height: int = 300) -> Chart:
    """Stacked bars per week: collected, then expected from invoices and from planned work."""
    left, right, top, bottom = 70, 10, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    weeks = forecast.weeks
    peak = max((w.total.amount for w in weeks), default=0) or 1
    step = _nice_step(float(peak))
    scale_max = step * max(1, -(-float(peak) // step))  # round the axis up to a whole step
    slot = plot_w / max(1, len(weeks))
    bar_w = slot * 0.7
    baseline = top + plot_h
    bars: list[Bar] = []
    labels: list[tuple[float, str]] = []
    for i, week in enumerate(weeks):
        x = left + i * slot + (slot - bar_w) / 2
        y = float(baseline)
        for kind, amount in (
            ("collected", week.collected),
            ("invoiced", week.invoiced),
            ("planned", week.planned),
        ):
            if amount.is_zero():
                continue
            h = float(amount.amount) / scale_max * plot_h
            y -= h
            bars.append(Bar(x, y, bar_w, h, kind, f"week of {week.start}: {kind} {money(amount)}"))
        labels.append((left + i * slot + slot / 2, week.start.strftime("%b %d")))
    ticks = tuple(
        Tick(baseline - plot_h * (n * step) / scale_max, _short(n * step, forecast.currency))
        for n in range(round(scale_max / step) + 1)
    )
    this_week = reports.week_start(forecast.today)
    index = next((i for i, w in enumerate(weeks) if w.start == this_week), 0)
    return Chart(
        width,
        height,
        left,
        top,
        plot_h,
        tuple(bars),
        ticks,
        tuple(labels),
        left + index * slot,
        float(baseline),
    )


def _nice_step(peak: float) -> float:
    raw = peak / 4
    magnitude = 10 ** (len(str(int(raw))) - 1) if raw >= 1 else 1
    for multiple in (1, 2, 2.5, 5, 10):
        if raw <= multiple * magnitude:
            return float(multiple * magnitude)
    return float(10 * magnitude)


def _short(value: float, currency: str) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k {currency}"
    return f"{value:g} {currency}"


# --------------------------------------------------------------------------- saved methods


class _MethodCache:
    """Saved payment methods per client, kept a few minutes so a page load is not a burst of
    gateway calls; a gateway failure shows as unknown and is asked again next time."""

    def __init__(self, gateway: PaymentGateway | None, ttl: float = METHOD_CACHE_SECONDS) -> None:
        self._gateway = gateway
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cache: dict[ClientKey, tuple[float, SavedMethod | None]] = {}

    def lookup(self, keys: Sequence[ClientKey]) -> tuple[dict[ClientKey, SavedMethod | None], str]:
        found: dict[ClientKey, SavedMethod | None] = {}
        problem = ""
        if self._gateway is None:
            return found, "no payment gateway is configured"
        now = time.monotonic()
        for key in keys:
            with self._lock:
                cached = self._cache.get(key)
            if cached is not None and now - cached[0] < self._ttl:
                found[key] = cached[1]
                continue
            try:
                method = self._gateway.saved_method(key)
            except (TransientError, RejectedError, ConfigError) as exc:
                problem = f"the payment gateway could not be asked: {exc}"
                continue
            with self._lock:
                self._cache[key] = (now, method)
            found[key] = method
        return found, problem


# --------------------------------------------------------------------------- security


class _Guard:
    """The token (off loopback or when configured), the Host check (on loopback without a
    token: a DNS-rebinding page cannot pass for this machine) and the CSRF tokens."""

    def __init__(self, server: ServerConfig, token: str | None) -> None:
        self.token = token
        self.refuse = None
        if token is None and not is_loopback(server.host):
            where = (
                f"export {server.dashboard_token_env}=<a long random value>"
                if server.dashboard_token_env
                else 'set [server] dashboard_token_env = "MILESTONE_SYNC_DASHBOARD_TOKEN" and '
                "export that variable"
            )
            self.refuse = (
                f"The dashboard is off: [server] host = {server.host!r} is reachable from other "
                f"machines, and no token protects it. {where}, then restart milestone-sync."
            )
        self.hosts = {"127.0.0.1", "localhost", "::1", server.host.strip("[]").lower()}
        key = secrets.token_bytes(32)  # per process: a restart asks browsers to sign in again
        self._session = URLSafeTimedSerializer(key, salt="milestone-sync.dashboard.session")
        self._csrf = URLSafeTimedSerializer(key, salt="milestone-sync.dashboard.csrf")
        self._note = URLSafeTimedSerializer(key, salt="milestone-sync.dashboard.note")

    # -- token

    def signed_in(self, request: Request) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and _same(header[7:].strip(), self.token):
            return True
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            try:
                return bool(self._session.loads(cookie, max_age=SESSION_MAX_AGE) == "ok")
            except BadData:
                return False
        return False

    def token_in_query(self, request: Request) -> bool:
        given = request.query_params.get("token")
        return given is not None and self.token is not None and _same(given, self.token)

    def session_cookie(self) -> str:
        return self._session.dumps("ok")

    def host_allowed(self, request: Request) -> bool:
        if self.token is not None:
            return True
        host = (request.url.hostname or "").lower()
        return host in self.hosts

    # -- CSRF

    def csrf_value(self, request: Request) -> tuple[str, bool]:
        """The browser's CSRF cookie value, and whether it must be (re)set."""
        value = request.cookies.get(CSRF_COOKIE, "")
        if len(value) >= 32:
            return value, False
        return secrets.token_urlsafe(32), True

    def csrf_token(self, value: str) -> str:
        return self._csrf.dumps(value)

    def csrf_ok(self, request: Request, form: Mapping[str, list[str]]) -> bool:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        given = (form.get(CSRF_FIELD) or [""])[0]
        if not cookie or not given:
            return False
        try:
            bound = self._csrf.loads(given, max_age=CSRF_MAX_AGE)
        except BadData:
            return False
        return isinstance(bound, str) and _same(bound, cookie)

    # -- the note shown after an action

    def note(self, text: str) -> str:
        return self._note.dumps(text)

    def read_note(self, request: Request) -> str | None:
        signed = request.query_params.get("note")
        if not signed:
            return None
        try:
            text = self._note.loads(signed, max_age=NOTE_MAX_AGE)
        except BadData:
            return None
        return text if isinstance(text, str) else None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _form(request: Request) -> dict[str, list[str]] | None:
    """The urlencoded form (starlette's own parser needs python-multipart); None when too big."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


# --------------------------------------------------------------------------- the routes


Handler = Callable[[Request], Awaitable[Response]]


def dashboard_routes(application: App, *, token: str | None = None) -> list[BaseRoute]:
    """The dashboard's routes, to mount at `/` beside `/webhooks/...`, `/healthz`, `/metrics`
    (it uses none of those paths).

    `token`: when given, every page needs it; when None it is read from the environment
    variable `[server] dashboard_token_env` names. A `[server] host` that is not loopback with
    no token refuses every page (403, saying how to set one) rather than serve them open."""
    server = application.config.server
    guard = _Guard(server, token if token is not None else dashboard_token(server))
    if guard.refuse:
        log.warning("dashboard.off", reason=guard.refuse)
    env = _environment()
    methods = _MethodCache(application.adapters.gateway)
    uow_factory = application.uow_factory()
    zone = ZoneInfo(application.config.firm.timezone)
    firm = application.config.firm.name

    def today() -> date:
        return application.clock.now().astimezone(zone).date()

    def read(fn: Callable[[UnitOfWork], Any]) -> Any:
        with uow_factory() as uow:
            return fn(uow)

    def render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        value, fresh = guard.csrf_value(request)
        html = env.get_template(name).render(
            firm=firm,
            pages=PAGES,
            path=request.url.path,
            note=guard.read_note(request),
            csrf_field=CSRF_FIELD,
            csrf_token=guard.csrf_token(value),
            today=today(),
            **context,
        )
        response = HTMLResponse(html, status)
        if fresh:
            response.set_cookie(
                CSRF_COOKIE,
                value,
                httponly=True,
                samesite="strict",
                secure=_secure(request),
                max_age=CSRF_MAX_AGE,
            )
        return response

    def refused(request: Request, status: int, title: str, message: str) -> Response:
        html = env.get_template("refused.html").render(
            firm=firm, title=title, message=message, pages={}, path=request.url.path, note=None
        )
        return _headers(HTMLResponse(html, status))

    def protected(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if guard.refuse:
                return refused(request, 403, "Dashboard off", guard.refuse)
            if not guard.host_allowed(request):
                return refused(
                    request,
                    403,
                    "Wrong address",
                    "Without a token this dashboard answers only to http://127.0.0.1 (or "
                    "localhost) on this machine; to reach it under another name, set [server] "
                    "dashboard_token_env and export that variable.",
                )
            if request.method == "GET" and guard.token_in_query(request):
                # swap the token for a cookie at once, so it stays out of history and logs
                rest = {k: v for k, v in request.query_params.items() if k != "token"}
                target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
                response = RedirectResponse(target, 303)
                response.set_cookie(
                    SESSION_COOKIE,
                    guard.session_cookie(),
                    httponly=True,
                    samesite="strict",
                    secure=_secure(request),
                    max_age=SESSION_MAX_AGE,
                )
                return _headers(response)
            if not guard.signed_in(request):
                variable = server.dashboard_token_env or "the dashboard token"
                return refused(
                    request,
                    401,
                    "Token needed",
                    f"This dashboard needs its token: open this address with ?token=<the value "
                    f"of {variable}> once, or send it as 'Authorization: Bearer <token>'.",
                )
            return _headers(await handler(request))

        return guarded

    # ------------------------------------------------------------------ pages

    def client_names(uow: UnitOfWork) -> dict[str, str]:
        return {c.key: c.name for c in uow.clients.list()}

    async def pipeline_page(request: Request) -> Response:
        q = request.query_params
        state_text = q.get("state") or ""
        state = MilestoneState(state_text) if state_text in set(MilestoneState) else None

        def gather(uow: UnitOfWork) -> tuple[reports.Pipeline, dict[str, str]]:
            return (
                reports.pipeline(
                    uow.milestones.list(), client=q.get("client"), plan=q.get("plan"), state=state
                ),
                client_names(uow),
            )

        view, names = await run_in_threadpool(read, gather)
        return render(
            request,
            "pipeline.html",
            view=view,
            names=names,
            client=q.get("client") or "",
            plan=q.get("plan") or "",
            state=state.value if state else "",
            states=list(MilestoneState),
            reports=reports,
        )

    async def attention_page(request: Request) -> Response:
        def gather(uow: UnitOfWork) -> tuple[reports.Attention, dict[str, str]]:
            return (
                reports.attention(uow.milestones.list(), uow.phases.list(PhaseStatus.UNMAPPED)),
                client_names(uow),
            )

        view, names = await run_in_threadpool(read, gather)
        return render(request, "attention.html", view=view, names=names, Action=reports.Action)

    async def clients_page(request: Request) -> Response:
        def gather(uow: UnitOfWork) -> tuple[Any, Any]:
            return uow.clients.list(), uow.milestones.list()

        clients, milestones = await run_in_threadpool(read, gather)
        keys = sorted({c.key for c in clients} | {m.client_key for m in milestones})
        found, problem = await run_in_threadpool(methods.lookup, keys)
        rows = reports.client_summaries(clients, milestones, found)
        return render(request, "clients.html", rows=rows, problem=problem)

    async def aging_page(request: Request) -> Response:
        def gather(uow: UnitOfWork) -> tuple[reports.Aging, dict[str, str]]:
            return reports.aging(uow.milestones.list(), today()), client_names(uow)

        view, names = await run_in_threadpool(read, gather)
        return render(
            request, "aging.html", view=view, names=names, buckets=reports.BUCKETS, reports=reports
        )

    async def forecast_page(request: Request) -> Response:
        weeks = _int(request.query_params.get("weeks"), 12, 1, 52)

        def gather(uow: UnitOfWork) -> tuple[reports.Forecast, ...]:
            return reports.forecast(uow.milestones.list(), today(), weeks=weeks)

        views = await run_in_threadpool(read, gather)
        charts = [(f, forecast_chart(f)) for f in views]
        return render(request, "forecast.html", charts=charts, weeks=weeks)

    async def leakage_page(request: Request) -> Response:
        def gather(uow: UnitOfWork) -> reports.Leakage:
            phases = uow.phases.list(PhaseStatus.UNMAPPED) + uow.phases.list(PhaseStatus.IGNORED)
            return reports.leakage(phases, uow.milestones.list(), uow.engagements.list())

        view = await run_in_threadpool(read, gather)
        return render(request, "leakage.html", view=view, LeakKind=reports.LeakKind)

    async def audit_page(request: Request) -> Response:
        milestone = (request.query_params.get("milestone") or "").strip() or None

        def gather(uow: UnitOfWork) -> reports.AuditTrail:
            subject = MilestoneKey(milestone) if milestone else None
            return reports.audit_trail(
                uow.operations.list(subject=subject),
                uow.audit.list(AUDIT_LIMIT, subject=milestone),
                milestone,
            )

        view = await run_in_threadpool(read, gather)
        return render(request, "audit.html", view=view, milestone=milestone or "")

    # ------------------------------------------------------------------ actions

    async def action(request: Request) -> Response:
        name = request.path_params["action"]
        if name not in set(reports.Action):
            return refused(
                request, 404, "No such action", "The dashboard can retry, approve, void."
            )
        form = await _form(request)
        if form is None:
            return refused(request, 413, "Form too large", "That form is larger than any we send.")
        if not guard.csrf_ok(request, form):
            log.warning("dashboard.csrf_refused", action=name)
            return refused(
                request,
                403,
                "Form refused",
                "This form expired or did not come from this dashboard: go back, reload the "
                "page and try again.",
            )
        back = (form.get("back") or ["/attention"])[0]
        if back not in PAGES:
            back = "/attention"
        keys = [MilestoneKey(k.strip()) for k in form.get("key", []) if k.strip()]
        reason = (form.get("reason") or [""])[0].strip()
        message = await run_in_threadpool(perform, name, keys, reason)
        log.info("dashboard.action", action=name, milestones=len(keys), result=message)
        return RedirectResponse(f"{back}?{urlencode({'note': guard.note(message)})}", 303)

    def perform(name: str, keys: list[MilestoneKey], reason: str) -> str:
        if not keys:
            # never call a use case with no keys: retry(None) and approve(None) mean "all"
            return f"{name}: choose a milestone first"
        if name == reports.Action.VOID and not reason:
            return "void: say why (the reason goes into the audit log)"
        try:
            service = application.service()
            if name == reports.Action.RETRY:
                done = service.retry(keys)
                verb, unmoved = "retried", "it no longer needs attention"
            elif name == reports.Action.APPROVE:
                done = service.approve(keys)
                verb, unmoved = "approved", "it is no longer awaiting approval"
            else:
                done = service.void(keys, reason)
                verb, unmoved = "voided", "it was invoiced or has moved on: void it in the ledger"
        except (ConfigError, TransientError, RejectedError) as exc:
            return f"{name} did not run: {exc}"
        except InvariantViolation:
            # the daemon moved the milestone between the page and the click
            return f"{name}: the milestone changed meanwhile; look again and retry"
        skipped = [k for k in keys if k not in done]
        parts = []
        if done:
            parts.append(f"{verb} {', '.join(done)}")
        if skipped:
            parts.append(f"not {verb}: {', '.join(skipped)} ({unmoved})")
        return "; ".join(parts)

    async def stylesheet(request: Request) -> Response:
        css = (STATIC / "dashboard.css").read_text()
        return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    pages: dict[str, Handler] = {
        "/": pipeline_page,
        "/attention": attention_page,
        "/clients": clients_page,
        "/aging": aging_page,
        "/forecast": forecast_page,
        "/leakage": leakage_page,
        "/audit": audit_page,
    }
    routes: list[BaseRoute] = [
        Route(path, protected(handler), methods=["GET"]) for path, handler in pages.items()
    ]
    routes.append(Route("/actions/{action:str}", protected(action), methods=["POST"]))
    routes.append(Route("/assets/dashboard.css", stylesheet, methods=["GET"]))
    return routes


def _int(text: str | None, default: int, low: int, high: int) -> int:
    try:
        value = int(text) if text else default
    except ValueError:
        return default
    return min(high, max(low, value))
