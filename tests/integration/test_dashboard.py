"""The dashboard over HTTP (starlette's TestClient) on a firm whose milestones are in every state,
built by running the real sync cycle over the memory world: each page renders what the read
models say, filters narrow it, approve/retry/void change state through the use cases, a form
without a valid CSRF token is refused and changes nothing, the token guards every page off
loopback, and no secret reaches a page."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest
from httpx2 import Response
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient  # over httpx2, as starlette 1.x asks

from adapters.memory.faults import Fault
from adapters.memory.store import MemoryStore
from adapters.web.dashboard import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    dashboard_routes,
    dashboard_url,
    is_loopback,
)
from connector.config import AppConfig, ServerConfig
from connector.domain.errors import TransientError
from connector.domain.ids import ClientKey, LedgerCustomerId, MilestoneKey, SourceId, WorkItemKey
from connector.domain.model import Engagement, Milestone, MilestoneState
from connector.ports import UnitOfWork
from mappings.engine import MappingEngine
from scheduler.bootstrap import Adapters, App
from tests.support import START, World, firm_config, new_world

S = MilestoneState

ADVISORY = """
[[plans]]
id = "advisory"
name = "Advisory project"
match = { source = "karbon", work_type = "Advisory" }
fee = "2400.00"

[[plans.milestones]]
id = "start"
name = "Project started"
trigger = { status = "In Progress" }
percent = 50

[[plans.milestones]]
id = "wrap"
name = "Project delivered"
trigger = { status = "Completed" }
offset_days = 56
remainder = true
"""

# values that must never reach a page: the dashboard token and a gateway-looking secret
DASHBOARD_TOKEN = "dash-token-8f2c1e9a7b3d4c5e6f708192a3b4c5d6"
STRIPE_KEY = "sk_test_51DashboardNeverShowsThisKey000000000000"
START_DAY = START.date()

APPROVE = MilestoneKey("karbon:WI-2:kickoff")  # awaiting approval: approved in the tests
APPROVE_TOO = MilestoneKey("karbon:WI-2:review")  # awaiting approval: voided in the tests
REJECTED = MilestoneKey("karbon:WI-13:kickoff")  # the ledger refused its invoice: retried
NO_METHOD = MilestoneKey("karbon:WI-7:start")  # invoiced, no saved method: needs attention
NO_CUSTOMER = MilestoneKey("karbon:WI-4:kickoff")  # blocked: the client has no ledger customer
GHOST = MilestoneKey("karbon:WI-6:kickoff")  # blocked: a customer the ledger lacks
PAID = MilestoneKey("karbon:WI-1:kickoff")  # charged by card and booked
OLDEST = MilestoneKey("karbon:WI-3:kickoff")  # invoice only, unpaid since week 0
WEEKS = 13  # the story runs 13 weeks from START; "today" is the Monday after


@dataclass
class Firm:
    """A seeded firm: the App the dashboard reads, and the world behind it."""

    app: App
    world: World
    store: MemoryStore

    def milestone(self, key: str) -> Milestone:
        with self.uow() as uow:
            found = uow.milestones.get(MilestoneKey(key))
        assert found is not None, key
        return found

    def milestones(self) -> list[Milestone]:
        with self.uow() as uow:
            return uow.milestones.list()

    def uow(self) -> UnitOfWork:
        return self.store.unit_of_work(self.app.config.firm.id)


def _engagement(
    world: World, key: str, client: str, name: str, work_type: str, start: date, customer: str
) -> None:
    world.karbon.add_engagement(
        Engagement(
            source=SourceId("karbon"),
            key=WorkItemKey(key),
            client_key=ClientKey(client),
            client_name=name,
            title=f"{work_type} - {name}",
            work_type=work_type,
            start_date=start,
            ledger_customer_id=LedgerCustomerId(customer),
        )
    )


def seeded_firm(config: AppConfig | None = None) -> Firm:
    """Thirteen weeks of a small firm, made by the real sync cycle over the memory world, so
    its milestones are in every interesting state: paid by card or bank week after week,
    invoiced and ageing (invoice only; one paid by cheque), awaiting approval, refused by the
    ledger, charge failed, needing attention (no saved method), blocked (no ledger customer; a
    customer the ledger lacks), pending with planned dates ahead, plus an unmapped and an
    ignored phase."""
    config = config or firm_config(extra=ADVISORY)
    world = new_world()
    store = MemoryStore()

    def uow() -> UnitOfWork:
        return store.unit_of_work(config.firm.id)

    service = world.service(uow, config)
    world.tax_return("WI-1", "CL-ACME")
    world.gateway.add_method("CL-ACME")
    world.tax_return("WI-2", "CL-APPROVE", customer="61")
    world.tax_return("WI-3", "CL-INVOICE", customer="62")
    world.tax_return("WI-4", "CL-NOCUST", customer=None)
    world.tax_return("WI-5", "CL-DECLINE", customer="63")
    world.gateway.add_method("CL-DECLINE", "decline:insufficient_funds")
    world.ledger.add_customer("65", "Bright Dental PC")
    world.gateway.add_method("CL-BRIGHT", kind="us_bank_account")
    _engagement(world, "WI-10", "CL-BRIGHT", "Bright Dental PC", "Tax Return", START_DAY, "65")
    _engagement(world, "WI-6", "CL-GHOST", "Ghost Ltd", "Tax Return", START_DAY, "404")
    world.tax_return("WI-7", "CL-ADVICE", customer="64", work_type="Advisory")
    world.ledger.add_customer("66", "Harbor Labs")
    world.gateway.add_method("CL-HARBOR")
    for key, weeks in (("WI-11", 6), ("WI-12", 9), ("WI-14", 11)):
        start = START_DAY + timedelta(weeks=weeks)
        _engagement(world, key, "CL-HARBOR", "Harbor Labs", "Advisory", start, "66")
    world.tax_return("WI-13", "CL-REFUSED", customer="67")
    world.tax_return("WI-15", "CL-ACH", customer="68")
    world.gateway.add_method("CL-ACH", "processing", kind="us_bank_account")
    world.tax_return("WI-8", "CL-ACME", work_type="Payroll")  # no plan matches: unmapped
    world.tax_return("WI-9", "CL-ACME", work_type="Internal")  # an ignore rule: ignored
    story: dict[int, list[tuple[str, str, str | None]]] = {
        0: [
            ("WI-1", "In Progress", "Documents received"),
            ("WI-3", "In Progress", "Documents received"),
        ],
        2: [("WI-8", "Completed", None), ("WI-9", "Completed", None)],
        3: [("WI-1", "In Progress", "Review"), ("WI-10", "In Progress", "Documents received")],
        6: [("WI-1", "Completed", None), ("WI-11", "In Progress", None)],
        7: [("WI-10", "In Progress", "Review")],
        8: [("WI-3", "In Progress", "Review"), ("WI-7", "In Progress", None)],
        9: [("WI-12", "In Progress", None), ("WI-10", "Completed", None)],
        10: [("WI-4", "In Progress", "Documents received")],
        11: [
            ("WI-14", "In Progress", None),
            ("WI-6", "In Progress", "Documents received"),
            ("WI-5", "In Progress", "Documents received"),
        ],
        12: [
            ("WI-3", "Completed", None),
            ("WI-2", "In Progress", "Documents received"),
            ("WI-2", "In Progress", "Review"),
            ("WI-13", "In Progress", "Documents received"),
            ("WI-15", "In Progress", "Documents received"),
        ],
    }
    for week in range(WEEKS):
        for key, status, secondary in story.get(week, []):
            world.reach(key, status, secondary)
        if week == 12:
            world.ledger.create_faults.push(Fault.REJECT)  # the next invoice (WI-13) is refused
        service.run_cycle()
        if week == 10:
            review = _milestone(uow, "karbon:WI-3:review")
            assert review.invoice_id is not None
            world.ledger.pay_externally(review.invoice_id, review.amount)  # paid by cheque
        world.clock.set(START + timedelta(weeks=week + 1))
    service.run_cycle()
    app = App(
        config=config,
        config_path=Path("dashboard-test.toml"),
        database_url="memory://",
        mapper=MappingEngine(config),
        adapters=Adapters(
            sources=[world.karbon, world.keeper], ledger=world.ledger, gateway=world.gateway
        ),
        clock=world.clock,
        store=store,
    )
    return Firm(app, world, store)


def _milestone(uow: Callable[[], UnitOfWork], key: str) -> Milestone:
    with uow() as unit:
        found = unit.milestones.get(MilestoneKey(key))
    assert found is not None, key
    return found


def dashboard_app(firm: Firm, token: str | None = None) -> Starlette:
    return Starlette(routes=dashboard_routes(firm.app, token=token))


LOOPBACK = "http://127.0.0.1:8765"
TOKEN_ENV = "MILESTONE_SYNC_TEST_DASHBOARD_TOKEN"
PAGES = ("/", "/attention", "/clients", "/aging", "/forecast", "/leakage", "/audit")


@pytest.fixture(scope="module")
def seeded() -> Firm:
    """One seeded firm for the tests that only read."""
    return seeded_firm()


@pytest.fixture
def firm() -> Firm:
    """A fresh seeded firm for the tests that act."""
    return seeded_firm()


def client_for(firm: Firm, token: str | None = None, base_url: str = LOOPBACK) -> TestClient:
    return TestClient(dashboard_app(firm, token), base_url=base_url)


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def keys_listed(html: str, table: str) -> set[str]:
    section = html.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    return set(re.findall(r'<tr data-key="([^"]+)"', section))


def post_action(
    client: TestClient, action: str, key: str, token: str | None, **fields: str
) -> Response:
    data = {"key": key, "back": "/attention", **fields}
    if token is not None:
        data["csrf_token"] = token
    return client.post(f"/actions/{action}", data=data, follow_redirects=False)


# --------------------------------------------------------------------------- pages


def test_every_page_renders_what_the_store_holds(seeded: Firm) -> None:
    client = client_for(seeded)
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["cache-control"] == "no-store"

    pipeline = client.get("/").text
    every = {m.key for m in seeded.milestones()}
    assert keys_listed(pipeline, "milestones") == every
    reconciled = [m for m in seeded.milestones() if m.state is S.RECONCILED]
    row = re.search(r'data-state="reconciled">.*?</tr>', pipeline, re.S)
    assert row and f'<td class="num">{len(reconciled)}</td>' in row.group(0)
    assert "$1,200.00" in pipeline and "1001" in pipeline  # an amount and an invoice number

    attention = client.get("/attention").text
    assert keys_listed(attention, "attention") == {
        APPROVE,
        APPROVE_TOO,
        REJECTED,
        NO_METHOD,
        NO_CUSTOMER,
        GHOST,
    }
    assert "has no saved card or bank account" in attention  # the reason says what to do
    assert "customer 404 does not exist in the ledger" in attention  # blocked, by mapping
    assert "no plan matches" in attention  # the unmapped phase
    assert attention.count('action="/actions/approve"') == 2
    assert attention.count('action="/actions/retry"') == 2

    clients = client.get("/clients").text
    assert "visa ending 4242" in clients and "bank account ending" in clients
    acme = clients.split('data-client="CL-INVOICE"', 1)[1].split("</tr>", 1)[0]
    assert "$1,800.00" in acme  # two open invoices: 1,200 + 600 (the cheque paid the third)

    aging = client.get("/aging").text
    invoice_row = aging.split('data-client="CL-INVOICE"', 1)[1].split("</tr>", 1)[0]
    cells = re.findall(r'<td class="num[^"]*">([^<]+)</td>', invoice_row)
    assert cells == ["$600.00", "$0.00", "$0.00", "$1,200.00", "$0.00", "$1,800.00"]

    forecast = client.get("/forecast").text
    assert "<svg" in forecast and 'class="bar collected"' in forecast
    assert 'class="bar invoiced"' in forecast and 'class="bar planned"' in forecast
    leakage = client.get("/leakage").text
    assert "internal work is never billed" in leakage  # the ignored phase, with its reason
    assert 'id="at-risk">$3,600.00<' in leakage  # two blocked + one refused, none invoiced

    audit = client.get("/audit").text
    assert "create_invoice" in audit and "invoice.created" in audit
    assert "rejected by the service (400)" in audit  # the refused write's last error


def test_filters_narrow_the_pipeline_and_the_audit_log(seeded: Firm) -> None:
    client = client_for(seeded)
    by_client = client.get("/", params={"client": "CL-INVOICE"}).text
    assert keys_listed(by_client, "milestones") == {
        m.key for m in seeded.milestones() if m.client_key == "CL-INVOICE"
    }
    assert 'value="CL-ACME"' in by_client  # the filter still offers the other clients
    by_plan = client.get("/", params={"plan": "advisory"}).text
    assert keys_listed(by_plan, "milestones") == {
        m.key for m in seeded.milestones() if m.plan_id == "advisory"
    }
    by_state = client.get("/", params={"plan": "tax-return", "state": "awaiting_approval"}).text
    assert keys_listed(by_state, "milestones") == {APPROVE, APPROVE_TOO}
    nothing = client.get("/", params={"client": "CL-NOBODY"}).text
    assert "No milestones match." in nothing

    one = client.get("/audit", params={"milestone": PAID}).text
    operations = one.split('id="operations"', 1)[1].split("</table>", 1)[0]
    subjects = set(re.findall(r"milestone=([^\"&]+)\"", operations))
    assert subjects == {PAID.replace(":", "%3A")}
    events = one.split('id="events"', 1)[1].split("</table>", 1)[0]
    assert "invoice.created" in events and "milestone.approved" not in events
    assert "karbon:WI-2" not in one


def test_the_clients_page_survives_a_gateway_that_cannot_answer(seeded: Firm) -> None:
    class Down:
        def saved_method(self, client_key: str) -> None:
            raise TransientError("payments: service unavailable (503)")

    app = App(
        config=seeded.app.config,
        config_path=seeded.app.config_path,
        database_url=seeded.app.database_url,
        mapper=seeded.app.mapper,
        adapters=Adapters(sources=[], ledger=seeded.world.ledger, gateway=Down()),  # type: ignore[arg-type]
        clock=seeded.app.clock,
        store=seeded.store,
    )
    page = TestClient(Starlette(routes=dashboard_routes(app)), base_url=LOOPBACK).get("/clients")
    assert page.status_code == 200
    assert "could not be asked: payments: service unavailable (503)" in page.text
    assert "visa ending" not in page.text and "unknown" in page.text


# --------------------------------------------------------------------------- actions


def test_approve_retry_and_void_change_state_through_the_use_cases(firm: Firm) -> None:
    client = client_for(firm)
    token = csrf_token(client.get("/attention").text)

    approved = post_action(client, "approve", APPROVE, token)
    assert approved.status_code == 303
    assert approved.headers["location"].startswith("/attention?note=")
    assert firm.milestone(APPROVE).state is S.INVOICING
    assert f"approved {APPROVE}" in client.get(approved.headers["location"]).text

    assert firm.milestone(REJECTED).state is S.NEEDS_ATTENTION
    post_action(client, "retry", REJECTED, token)
    retried = firm.milestone(REJECTED)
    assert retried.state is S.INVOICING and retried.attention_reason is None

    no_reason = post_action(client, "void", APPROVE_TOO, token, reason="  ")
    assert "void: say why" in client.get(no_reason.headers["location"]).text
    assert firm.milestone(APPROVE_TOO).state is S.AWAITING_APPROVAL
    post_action(client, "void", APPROVE_TOO, token, reason="client cancelled the engagement")
    assert firm.milestone(APPROVE_TOO).state is S.VOIDED
    with firm.uow() as uow:
        said = [e.message for e in uow.audit.list(5, subject=APPROVE_TOO)]
    assert "voided by an admin: client cancelled the engagement" in said

    # an invoiced milestone is not voided here (it is voided in the ledger): said, not done
    refused = post_action(client, "void", NO_METHOD, token, reason="no")
    assert "not voided" in client.get(refused.headers["location"]).text
    assert firm.milestone(NO_METHOD).state is S.NEEDS_ATTENTION

    # the daemon's next cycle invoices what was approved and retried
    firm.world.service(firm.uow, firm.app.config).run_cycle()
    assert firm.milestone(APPROVE).invoice_id is not None


def test_an_action_without_a_milestone_never_means_all_of_them(firm: Firm) -> None:
    client = client_for(firm)
    token = csrf_token(client.get("/attention").text)
    response = client.post("/actions/approve", data={"csrf_token": token, "back": "/attention"})
    assert "approve: choose a milestone first" in response.text
    assert firm.milestone(APPROVE).state is S.AWAITING_APPROVAL
    assert firm.milestone(APPROVE_TOO).state is S.AWAITING_APPROVAL
    assert client.post("/actions/delete", data={"csrf_token": token}).status_code == 404


def test_a_form_without_a_valid_csrf_token_is_refused_and_changes_nothing(firm: Firm) -> None:
    before = {m.key: (m.state, m.version) for m in firm.milestones()}
    app = dashboard_app(firm)
    client = TestClient(app, base_url=LOOPBACK)
    good = csrf_token(client.get("/attention").text)
    assert client.cookies.get(CSRF_COOKIE)

    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    stranger = TestClient(app, base_url=LOOPBACK)  # another browser, with its own cookie
    stranger.get("/attention")
    assert stranger.cookies.get(CSRF_COOKIE) != client.cookies.get(CSRF_COOKIE)
    cookieless = TestClient(app, base_url=LOOPBACK)
    restarted = client_for(firm)  # the daemon restarted: its signing key is new
    restarted.cookies.set(CSRF_COOKIE, client.cookies[CSRF_COOKIE])
    attempts = [
        post_action(client, "approve", APPROVE, None),  # no token
        post_action(client, "approve", APPROVE, ""),
        post_action(client, "approve", APPROVE, forged),  # tampered signature
        post_action(client, "approve", APPROVE, "not-a-token"),
        post_action(stranger, "approve", APPROVE, good),  # a token bound to another cookie
        post_action(cookieless, "approve", APPROVE, good),  # no cookie at all
        post_action(restarted, "approve", APPROVE, good),  # signed by the process before
        post_action(client, "void", APPROVE_TOO, None, reason="forged"),
        post_action(client, "retry", REJECTED, forged),
    ]
    for response in attempts:
        assert response.status_code == 403
        assert "did not come from this dashboard" in response.text
    assert {m.key: (m.state, m.version) for m in firm.milestones()} == before
    # the same browser with its real token still works
    assert post_action(client, "approve", APPROVE, good).status_code == 303


def test_cookies_are_http_only_and_same_site(seeded: Firm) -> None:
    response = client_for(seeded).get("/attention")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{CSRF_COOKIE}=")
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()


# --------------------------------------------------------------------------- the token


def exposed(config: AppConfig, **server: str) -> AppConfig:
    lines = "\n".join(f'{k} = "{v}"' for k, v in server.items())
    return firm_config(extra=ADVISORY + f"\n[server]\n{lines}\n")


def test_off_loopback_every_page_needs_the_token(
    seeded: Firm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, DASHBOARD_TOKEN)
    config = exposed(seeded.app.config, host="0.0.0.0", dashboard_token_env=TOKEN_ENV)
    app = App(**{**seeded.app.__dict__, "config": config})
    outside = "http://192.0.2.10:8765"  # Host as another machine would send it (no traffic)

    def fresh() -> TestClient:
        return TestClient(Starlette(routes=dashboard_routes(app)), base_url=outside)

    anonymous = fresh()
    for path in PAGES:
        response = anonymous.get(path)
        assert response.status_code == 401, path
        assert TOKEN_ENV in response.text and DASHBOARD_TOKEN not in response.text
    assert anonymous.post("/actions/approve", data={"key": APPROVE}).status_code == 401
    assert fresh().get("/", params={"token": "wrong"}).status_code == 401
    bearer = {"Authorization": f"Bearer {DASHBOARD_TOKEN}"}
    assert fresh().get("/aging", headers=bearer).status_code == 200
    assert fresh().get("/aging", headers={"Authorization": "Bearer nope"}).status_code == 401

    browser = fresh()
    signed = browser.get(
        "/forecast", params={"token": DASHBOARD_TOKEN, "weeks": "8"}, follow_redirects=False
    )
    assert signed.status_code == 303
    assert signed.headers["location"] == "/forecast?weeks=8"  # the token leaves the address
    assert DASHBOARD_TOKEN not in signed.headers["set-cookie"]
    for path in PAGES:
        assert browser.get(path).status_code == 200, path
    forged = fresh()
    forged.cookies.set(SESSION_COOKIE, "ok.forged.signature")
    assert forged.get("/").status_code == 401


def test_off_loopback_without_a_token_the_dashboard_is_off(seeded: Firm) -> None:
    config = exposed(seeded.app.config, host="0.0.0.0")
    app = App(**{**seeded.app.__dict__, "config": config})
    client = TestClient(Starlette(routes=dashboard_routes(app)), base_url="http://192.0.2.10")
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 403
        assert "dashboard_token_env" in response.text
    assert client.post("/actions/approve", data={"key": APPROVE}).status_code == 403


def test_a_given_token_is_required_on_loopback_too(seeded: Firm) -> None:
    assert client_for(seeded, token=DASHBOARD_TOKEN).get("/").status_code == 401
    headers = {"Authorization": f"Bearer {DASHBOARD_TOKEN}"}
    assert client_for(seeded, token=DASHBOARD_TOKEN).get("/", headers=headers).status_code == 200


def test_on_loopback_a_page_asked_for_under_another_name_is_refused(seeded: Firm) -> None:
    # a DNS-rebinding page reaches 127.0.0.1 under its own host name
    rebound = client_for(seeded, base_url="http://attacker.example:8765")
    assert rebound.get("/").status_code == 403
    assert client_for(seeded, base_url="http://localhost:8765").get("/").status_code == 200


def test_no_secret_reaches_a_page(seeded: Firm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, DASHBOARD_TOKEN)
    monkeypatch.setenv("STRIPE_SECRET_KEY", STRIPE_KEY)
    config = exposed(seeded.app.config, dashboard_token_env=TOKEN_ENV)
    app = App(**{**seeded.app.__dict__, "config": config})
    client = TestClient(Starlette(routes=dashboard_routes(app)), base_url=LOOPBACK)
    seen = [client.get("/", params={"token": DASHBOARD_TOKEN}, follow_redirects=False)]
    seen += [client.get(path) for path in PAGES]
    token = csrf_token(seen[PAGES.index("/attention") + 1].text)
    seen.append(post_action(client, "approve", APPROVE, token))
    seen.append(client.get(seen[-1].headers["location"]))
    assert all(r.status_code in (200, 303) for r in seen)
    for response in seen:
        text = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
        assert DASHBOARD_TOKEN not in text
        assert STRIPE_KEY not in text


# --------------------------------------------------------------------------- serving beside others


def test_the_routes_leave_webhooks_health_and_metrics_free(seeded: Firm) -> None:
    routes = dashboard_routes(seeded.app)
    paths = {getattr(r, "path", "") for r in routes}
    assert not any(p.startswith(("/webhooks", "/healthz", "/metrics")) for p in paths)

    async def health(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[*routes, Route("/healthz", health)])
    client = TestClient(app, base_url=LOOPBACK)
    assert client.get("/healthz").text == "ok"
    css = client.get("/assets/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_where_the_dashboard_is_opened() -> None:
    assert dashboard_url(ServerConfig()) == "http://127.0.0.1:8765/"
    assert dashboard_url(ServerConfig(host="0.0.0.0", port=9000)) == "http://127.0.0.1:9000/"
    assert dashboard_url(ServerConfig(host="::1")) == "http://[::1]:8765/"
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "sync.firm.com"))
