"""Ninety days of a 40-client firm, end to end over the emulators: monthly closes and tax returns
billed as they complete, charged through Stripe (cards and ACH; soft and hard declines, a bank
asking the client to authenticate, a client with no saved method, an ACH debit returned after it
succeeded), refunded in part, disputed (one won, one lost), paid out (once negatively), and
paid by cheque in the ledger for the invoice-only clients. At the end `reconcile --check` is
clean, every milestone is in a final state, and no invoice was charged twice.

The same run again with every Stripe and ledger write committed and then its connection dropped,
and the process killed at random recovery points (restarted with fresh adapters): same result.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from adapters.memory.source import MemorySource
from adapters.store.engine import Store, open_store
from connector.domain.errors import TransientError
from connector.domain.ids import ClientKey, LedgerCustomerId, MilestoneKey, SourceId, WorkItemKey
from connector.domain.model import (
    TERMINAL,
    Engagement,
    EngagementKind,
    MilestoneState,
    TriggerKind,
)
from connector.ports import Ledger, OperationKind
from connector.services import SyncService
from mappings.engine import MappingEngine
from mappings.loader import load_config_text
from tests.conftest import DATABASE_PARAMS
from tests.contract.harness_stripe import START, SteppedTime, StripeHarness
from tests.integration.test_ledger_exactly_once import fresh_ledger
from tests.support import SimulatedCrash

CLIENTS = 40
DAYS = 90
CARD, ACH = "pm_card_visa", "pm_usBankAccount_success"
BEHAVIOUR = {  # everyone else pays by card
    **{n: ACH for n in range(20, 28)},
    28: "pm_card_visa_chargeDeclinedInsufficientFunds",  # soft: a new card the next day
    29: "pm_card_visa_chargeDeclinedStolenCard",  # hard: invited again, retried by the admin
    30: "pm_card_authenticationRequired",  # pays through the link, then saves another card
    31: None,  # no saved method until invited
    36: "pm_usBankAccount_succeedsThenReturned",  # the bank returns the debit after it succeeded
}
INVOICE_ONLY = range(32, 36)  # they pay by cheque, recorded in the ledger
TAX_CLIENTS = range(10)
CLOSE_DAYS = {"2026-10": 3, "2026-11": 33, "2026-12": 64}
TAX_DAYS = (10, 40, 70)

CONFIG = """
[firm]
id = "firm"  # the Stripe harness's tenant: charges carry it in their metadata
name = "Smith & Co CPAs"
currency = "USD"

[[sources]]
id = "karbon"
kind = "memory"

[[sources]]
id = "closes"
kind = "memory"

[ledger]
kind = "memory"

[payments]
kind = "memory"

[collection]
default_mode = "auto_charge"
retry_days = [1, 3, 7]

[defaults]
terms = "Net 15"
__DEFAULTS__

[[plans]]
id = "tax-return"
name = "Business tax return"
match = { source = "karbon" }
fee = "3000.00"

[[plans.milestones]]
id = "documents"
name = "Documents received"
trigger = { status = "In Progress", secondary = "Documents received" }
percent = 40

[[plans.milestones]]
id = "review"
name = "Review complete"
trigger = { status = "In Progress", secondary = "Review" }
percent = 40

[[plans.milestones]]
id = "filed"
name = "Return filed"
trigger = { status = "Completed" }
remainder = true

[[plans]]
id = "monthly-close"
name = "Monthly bookkeeping"
match = { source = "closes" }
recurring = "monthly"
fee = "450.00"
description = "Bookkeeping {period} - {client}"

[[plans.milestones]]
id = "close"
name = "Month closed"
trigger = { close_status = "Done" }
remainder = true
"""


class TimeClock:
    """The core's clock on the emulators' timeline."""

    def __init__(self, time: SteppedTime) -> None:
        self._time = time

    def now(self) -> datetime:
        return self._time.now()


class RandomKills:
    """Crashes at a share of the recovery points of every write (seeded)."""

    def __init__(self, rng: random.Random, odds: float) -> None:
        self.rng, self.odds, self.kills = rng, odds, 0

    def __call__(self, point: str, kind: OperationKind, subject: str) -> None:
        if self.rng.random() < self.odds:
            self.kills += 1
            raise SimulatedCrash(f"killed at {point} of {kind} for {subject}")


def ledger_harness(kind: str, time: SteppedTime) -> Any:
    if kind == "quickbooks":
        from tests.contract.harness_quickbooks import QuickBooksHarness

        return QuickBooksHarness(time=time)
    from tests.contract.harness_xero import XeroHarness

    return XeroHarness(time=time)


@dataclass
class Firm:
    """The outside world (practice source, Stripe, the ledger) and the firm's own database."""

    kind: str
    chaos: bool
    time: SteppedTime
    stripe: StripeHarness
    books: Any  # the ledger harness
    store: Store
    karbon: MemorySource = field(default_factory=lambda: MemorySource("karbon"))
    closes: MemorySource = field(default_factory=lambda: MemorySource("closes"))
    customers: dict[int, LedgerCustomerId] = field(default_factory=dict)
    kills: RandomKills | None = None
    ledger: Ledger | None = None
    gateway: Any = None
    restarts: int = 0
    disputes: dict[str, str] = field(default_factory=dict)  # and the payment link, once paid

    def __post_init__(self) -> None:
        item, tax = self.books.item(), self.books.tax_code()
        defaults = f'item = "{item}"' + (f'\ntax_code = "{tax}"' if tax else "")
        overrides = "".join(
            f'\n[clients."CL-{n:02d}"]\ncollection_mode = "invoice_only"\n' for n in INVOICE_ONLY
        )
        self.config = load_config_text(
            CONFIG.replace("__DEFAULTS__", defaults) + overrides, "firm.toml"
        )
        self.ledger = self.books.ledger
        self.gateway = self.stripe.gateway
        if self.chaos:
            self.kills = RandomKills(random.Random(90), odds=0.03)

    def service(self) -> SyncService:
        assert self.ledger is not None
        return SyncService(
            tenant=self.config.firm.id,
            uow=lambda: self.store.unit_of_work(self.config.firm.id),
            sources=[self.karbon, self.closes],
            ledger=self.ledger,
            gateway=self.gateway,
            mapper=MappingEngine(self.config),
            clock=TimeClock(self.time),
            policy=self.config.collection,
            fault=self.kills or (lambda point, kind, subject: None),
        )

    def run(self, step: Callable[[SyncService], object]) -> None:
        """Run a step; a kill restarts the process: fresh adapters, same database."""
        for _ in range(50):
            try:
                step(self.service())
                return
            except SimulatedCrash:
                self.restarts += 1
                self.ledger = fresh_ledger(self.books)
                self.gateway = self.stripe.new_gateway()
        raise AssertionError("killed 50 times in a row")

    def admin(self, action: Callable[[], Any]) -> Any:
        """A person's action (an invitation): the dropped connections plague the daemon's writes,
        not the admin's, who tries again until it works."""
        if self.chaos:
            self.stripe.emulator.drop_every_write(False)
        try:
            for _ in range(20):
                try:
                    return action()
                except TransientError:
                    continue
            raise AssertionError("the admin's action never got through")
        finally:
            if self.chaos:
                self.stripe.emulator.drop_every_write(True)

    def milestones(self) -> list[Any]:
        with self.store.unit_of_work(self.config.firm.id) as uow:
            return uow.milestones.list()


def client_key(n: int) -> ClientKey:
    return ClientKey(f"CL-{n:02d}")


@pytest.fixture(params=["quickbooks", "xero"])
def ledger_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build_firm(kind: str, chaos: bool, database_url: str) -> Firm:
    time = SteppedTime(start=START)
    # through faults, two tries per call: a lost answer is then looked up by the next cycle
    stripe = StripeHarness(time=time, max_attempts=2 if chaos else 4)
    books = ledger_harness(kind, time)
    if chaos:
        books.ledger.options = dataclasses.replace(books.ledger.options, max_attempts=2)
        books.ledger = fresh_ledger(books)
    store = open_store(database_url)
    firm = Firm(kind, chaos, time, stripe, books, store)
    for n in range(CLIENTS):
        key = client_key(n)
        firm.customers[n] = books.add_customer(f"Client {n:02d} LLC")
        method = BEHAVIOUR.get(n, CARD)
        if method is not None and n not in INVOICE_ONLY:
            stripe.add_client_with(key, method) if "Declined" not in method else _save(firm, n)
        for period in CLOSE_DAYS:
            firm.closes.add_engagement(
                Engagement(
                    source=SourceId("closes"),
                    key=WorkItemKey(f"{key}:{period}"),
                    client_key=key,
                    client_name=f"Client {n:02d} LLC",
                    title=f"{period} close",
                    kind=EngagementKind.RECURRING_CLOSE,
                    period=period,
                    ledger_customer_id=firm.customers[n],
                )
            )
        if n in TAX_CLIENTS:
            firm.karbon.add_engagement(
                Engagement(
                    source=SourceId("karbon"),
                    key=WorkItemKey(f"WI-{n:02d}"),
                    client_key=key,
                    client_name=f"Client {n:02d} LLC",
                    title=f"2026 Form 1120 - Client {n:02d}",
                    work_type="Tax Return",
                    start_date=date(2026, 11, 2),
                    ledger_customer_id=firm.customers[n],
                )
            )
    if chaos:
        stripe.emulator.drop_every_write(True)
        firm.books.emulator.drop_every_write(True)
    return firm


def _save(firm: Firm, n: int) -> None:
    """A client whose saved card declines: saving it works (the decline comes at charge time)."""
    link = firm.stripe.gateway.invite(client_key(n), f"Client {n:02d}", None)
    firm.stripe.emulator.complete_session(link.session_id, BEHAVIOUR[n])


@pytest.fixture(params=DATABASE_PARAMS)
def firms(
    request: pytest.FixtureRequest, ledger_kind: str, make_store_url: Callable[[str], str]
) -> Iterator[Callable[[bool], Firm]]:
    """The firm's database: SQLite in CI's SQLite run, PostgreSQL in its PostgreSQL run."""
    made: list[Firm] = []

    def make(chaos: bool) -> Firm:
        firm = build_firm(ledger_kind, chaos, make_store_url(request.param))
        made.append(firm)
        return firm

    yield make
    for firm in made:
        firm.store.dispose()
        firm.books.close()
        firm.stripe.close()


def milestone_of(firm: Firm, client: int, definition: str) -> Any:
    for milestone in firm.milestones():
        if milestone.client_key == client_key(client) and milestone.key.endswith(definition):
            return milestone
    raise AssertionError(f"no milestone {definition} for client {client}")


def charge_of(firm: Firm, milestone: Any) -> str:
    """The succeeded PaymentIntent of a milestone, from Stripe's own state."""
    for intent in firm.stripe.emulator.payment_intents():
        if intent["metadata"].get("milestone") == milestone.key and intent["status"] == "succeeded":
            return str(intent["id"])
    raise AssertionError(f"{milestone.key} has no succeeded charge")


def reinvite(firm: Firm, n: int, method: str) -> None:
    link = firm.admin(lambda: firm.gateway.invite(client_key(n), f"Client {n:02d}", None))
    firm.admin(lambda: firm.stripe.emulator.complete_session(link.session_id, method))


def the_day(firm: Firm, day: int) -> None:
    """What happens outside milestone-sync on one day."""
    at = firm.time.now()
    for period, on in CLOSE_DAYS.items():
        if day == on:
            for n in range(CLIENTS):
                firm.closes.complete(
                    WorkItemKey(f"{client_key(n)}:{period}"), "Done", at,
                    kind=TriggerKind.CLOSE_STATUS,
                )  # fmt: skip
    phases = {10: ("In Progress", "Documents received"), 40: ("In Progress", "Review")}
    if day in phases or day == TAX_DAYS[2]:
        status, secondary = phases.get(day, ("Completed", None))
        for n in TAX_CLIENTS:
            firm.karbon.complete(WorkItemKey(f"WI-{n:02d}"), status, at, secondary=secondary)
    if day == 4:  # the soft-declined client adds a good card; the retry tomorrow takes it
        reinvite(firm, 28, CARD)
    if day in (6, 8):  # the admin invites the hard-declined and the method-less client again
        n = 29 if day == 6 else 31
        reinvite(firm, n, CARD if n == 29 else ACH)
        stuck = [m.key for m in firm.milestones() if m.client_key == client_key(n)]
        firm.run(lambda service: service.retry([MilestoneKey(k) for k in stuck]))
    if day == 20:  # after its bank returned a debit, the client saves another bank account
        reinvite(firm, 36, ACH)
        stuck = [m.key for m in firm.milestones() if m.client_key == client_key(36)]
        firm.run(lambda service: service.retry([MilestoneKey(k) for k in stuck]))
    if day == 25:
        charge = charge_of(firm, milestone_of(firm, 2, "2026-10:close"))
        firm.disputes["won"] = firm.stripe.emulator.open_dispute(charge)
    if day == 26:
        charge = charge_of(firm, milestone_of(firm, 3, "2026-10:close"))
        firm.disputes["lost"] = firm.stripe.emulator.open_dispute(charge)
    if day == 30:
        firm.stripe.emulator.refund(charge_of(firm, milestone_of(firm, 0, "2026-10:close")), 10000)
    if day == 40:
        firm.stripe.emulator.win_dispute(firm.disputes["won"])
    if day == 45:
        firm.stripe.emulator.refund(charge_of(firm, milestone_of(firm, 1, "2026-10:close")), 5000)
    if day == 50:
        firm.stripe.emulator.lose_dispute(firm.disputes["lost"])
    if day == 62:  # after the day's payout emptied the balance: a big refund makes it negative
        firm.stripe.emulator.refund(charge_of(firm, milestone_of(firm, 4, "documents")))
    for milestone in firm.milestones():  # invoice-only clients pay by cheque after a week
        if (
            milestone.state is MilestoneState.INVOICED
            and int(milestone.client_key[3:]) in INVOICE_ONLY
            and milestone.triggered_at is not None
            and at - milestone.triggered_at >= timedelta(days=7)
        ):
            invoice = firm.ledger.get_invoice(milestone.invoice_id)  # type: ignore[union-attr]
            if not invoice.balance.is_zero():
                firm.books.pay_externally(milestone.invoice_id, invoice.balance)


def the_evening(firm: Firm, day: int) -> None:
    """What happens after the day's cycle."""
    # asked to authenticate, the client pays through the link the day it is sent (a Checkout
    # link lives 24 hours), then saves a card for next time
    links = [
        s
        for s in firm.stripe.emulator.checkout_sessions()
        if s["mode"] == "payment" and s["status"] == "open"
    ]
    if links and "link" not in firm.disputes:
        firm.admin(lambda: firm.stripe.emulator.complete_session(links[0]["id"], CARD))
        reinvite(firm, 30, CARD)
        firm.disputes["link"] = links[0]["id"]


def live_through(firm: Firm, days: int) -> None:
    for day in range(days):
        the_day(firm, day)
        for _ in range(2 if firm.chaos else 1):
            firm.run(lambda service: service.run_cycle())
        the_evening(firm, day)
        firm.time.advance(timedelta(days=1))
        firm.stripe.emulator.run_due()


# Each database gets one full run: PostgreSQL this calm one (on one ledger: what the ledgers do
# differently runs through faults on SQLite, both of them), SQLite the one through faults.
@pytest.mark.parametrize("ledger_kind", ["xero"])
@pytest.mark.parametrize("firms", [DATABASE_PARAMS[1]], indirect=True)
def test_ninety_days_end_reconciled_with_every_milestone_final(
    firms: Callable[[bool], Firm],
) -> None:
    firm = firms(False)

    live_through(firm, DAYS)

    assert_books_balance(firm)


@pytest.mark.parametrize("firms", [DATABASE_PARAMS[0]], indirect=True)  # once: SQLite
def test_the_same_ninety_days_through_dropped_writes_and_random_kills(
    firms: Callable[[bool], Firm],
) -> None:
    firm = firms(True)

    live_through(firm, DAYS)

    assert firm.restarts >= 5
    assert_books_balance(firm)


def assert_books_balance(firm: Firm) -> None:
    # a few quiet days for the last ACH debits, returns and payouts
    for _ in range(10):
        firm.run(lambda service: service.run_cycle())
        firm.time.advance(timedelta(days=1))
        firm.stripe.emulator.run_due()
    firm.run(lambda service: service.run_cycle())
    result = firm.service().check_reconciliation()
    assert result.differences == [], "\n".join(f"{w}: {d}" for w, d in result.differences)
    states = Counter(m.state for m in firm.milestones())
    stuck = [(m.key, m.attention_reason) for m in firm.milestones() if m.state not in TERMINAL]
    assert stuck == [], stuck
    assert sum(states.values()) == CLIENTS * len(CLOSE_DAYS) + 3 * len(TAX_CLIENTS)
    succeeded = Counter(
        pi["metadata"].get("invoice")
        for pi in firm.stripe.emulator.payment_intents()
        if pi["status"] == "succeeded"
    )
    assert [invoice for invoice, n in succeeded.items() if n > 1] == []
    payouts = firm.stripe.emulator.payouts()
    assert any(p["amount"] < 0 for p in payouts), "the run should include a negative payout"
    assert firm.stripe.violations() == []
    assert firm.books.emulator.violations() == []
