"""The demo firm as data (no I/O): Smith & Co CPAs' twelve clients, the work they have on in
the month, how each of them pays, and the day each piece of work moves. The roster and its
roles are fixed; the seed picks keys, fees, form types and the days things happen, so a seed
always makes the same firm, and every seed the same counts."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # a Monday, 9 a.m. in Chicago: tax season
PERIOD = "2026-02"  # the month the bookkeeping clients' books are closed for
TAX_YEAR = 2025
FIRM_ID = "smith-cpa"
FIRM_NAME = "Smith & Co CPAs"
CURRENCY = "USD"
MIN_DAYS, MAX_DAYS = 7, 90

CARD = "pm_card_visa"
ACH = "pm_usBankAccount_success"
LOST_CARD = "pm_card_visa_chargeDeclinedLostCard"  # a hard decline: retrying cannot help

ADVISORY_FEE = Decimal("6000.00")
CLOSE_FEE = Decimal("450.00")  # the monthly plan's fee (config); some clients have their own
TAX_FEES = tuple(Decimal(f) for f in ("1850.00", "2400.00", "2950.00", "3600.00", "4200.00"))
OWN_CLOSE_FEES = (Decimal("650.00"), Decimal("325.00"))
FORMS = ("Form 1120", "Form 1120-S", "Form 1065")

# Karbon statuses the preparers move tax returns through (trigger statuses in the config)
DOCUMENTS: tuple[str, str | None] = ("In Progress", "Documents received")
PREPARATION: tuple[str, str | None] = (
    "In Progress",
    "Preparation",
)  # bills nothing: a phase the demo shows ignored
REVIEW: tuple[str, str | None] = ("In Progress", "Review")
FILED: tuple[str, str | None] = ("Completed", "Filed")
# the close checklist's default sections (adapters.keeper.emulator.DEFAULT_SECTIONS)
PRE_CLOSE = ("Pre-close",)
RECONCILE = ("Account Reconciliations", "Transaction Review")
FINAL_REVIEW = ("Final Review",)
READY_FOR_REVIEW = "Ready for Manager Review"


@dataclass(frozen=True)
class Role:
    """One client of the roster: who they are and how they pay."""

    name: str
    method: str | None  # the Stripe test method they save; None: they never save one
    tax_return: bool = False
    bookkeeping: bool = False
    advisory: bool = False
    invoice_only: bool = False  # pays invoices by cheque, recorded in the ledger
    story: str = ""


ROSTER = (
    Role("Acme Corporation", CARD, tax_return=True, bookkeeping=True, story="pays by card"),
    Role(
        "Birch & Co Architects",
        "pm_card_mastercard",
        tax_return=True,
        bookkeeping=True,
        story="pays by card",
    ),
    Role(
        "Cove Cafe",
        CARD,
        advisory=True,
        bookkeeping=True,
        story="cash-flow project: a partner approves each invoice",
    ),
    Role("Dunmore Dental", ACH, tax_return=True, bookkeeping=True, story="pays by ACH debit"),
    Role("Elm Street Bakery", ACH, tax_return=True, story="pays by ACH debit"),
    Role("Fairview Veterinary", "pm_card_amex", tax_return=True, bookkeeping=True),
    Role("Granite Holdings", ACH, tax_return=True, bookkeeping=True, story="pays by ACH debit"),
    Role(
        "Harbor Physio",
        None,
        tax_return=True,
        bookkeeping=True,
        invoice_only=True,
        story="invoice only: pays by cheque",
    ),
    Role("Iris Florists", "pm_card_visa_debit", tax_return=True, story="pays by debit card"),
    Role("Juniper Yoga", None, bookkeeping=True, story="never saved a card or bank account"),
    Role("Kestrel Logistics", LOST_CARD, bookkeeping=True, story="their card was reported lost"),
    Role("Lumen Studio", CARD, tax_return=True, story="pays by card"),
)


@dataclass(frozen=True)
class Client:
    key: str  # Karbon's ClientKey; also the client's id in the close tool and at Stripe
    name: str
    email: str
    role: Role
    close_fee: Decimal | None  # None: no bookkeeping; else what a month costs them


@dataclass(frozen=True)
class WorkItem:
    """A Karbon work item, Planned when the month begins."""

    key: str
    client: Client
    title: str
    work_type: str
    fee: Decimal


@dataclass(frozen=True)
class Close:
    """A monthly close in the close-checklist tool, Not Started when the month begins."""

    client: Client
    period: str


@dataclass(frozen=True)
class WorkMove:
    """A preparer (or a Karbon automator) moves a work item to a status."""

    item: WorkItem
    primary: str
    secondary: str | None


@dataclass(frozen=True)
class CloseMove:
    """The bookkeeper ticks off sections of a close (the tool moves its status), and may set
    its status by hand."""

    close: Close
    sections: tuple[str, ...]
    status: str | None = None


@dataclass(frozen=True)
class Step:
    day: int  # 1 .. days-1 of the month (day 0 is the daemon's first, quiet day)
    label: str
    move: WorkMove | CloseMove


@dataclass(frozen=True)
class Firm:
    seed: int
    days: int
    clients: tuple[Client, ...]
    work: tuple[WorkItem, ...]
    closes: tuple[Close, ...]
    steps: tuple[Step, ...]
    cheque_after_days: int  # how long an invoice-only client takes to post a cheque

    def moment(self, day: int) -> datetime:
        """When day `day`'s work happens."""
        return START + timedelta(days=day)

    def steps_on(self, day: int) -> list[Step]:
        return [s for s in self.steps if s.day == day]

    def client(self, key: str) -> Client:
        return next(c for c in self.clients if c.key == key)


def _key(rng: random.Random) -> str:
    """A key shaped like Karbon's (12 letters and digits)."""
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(12))


def _slug(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def build_firm(seed: int, days: int) -> Firm:
    """The firm for `seed`, its month compressed into `days` days."""
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise ValueError(f"days must be {MIN_DAYS} to {MAX_DAYS}, not {days}")
    rng = random.Random(seed)
    own_fees = dict(
        zip(
            rng.sample([r.name for r in ROSTER if r.bookkeeping], len(OWN_CLOSE_FEES)),
            OWN_CLOSE_FEES,
            strict=True,
        )
    )
    clients = tuple(
        Client(
            key=_key(rng),
            name=role.name,
            email=f"accounts@{_slug(role.name)}.example",
            role=role,
            close_fee=own_fees.get(role.name, CLOSE_FEE) if role.bookkeeping else None,
        )
        for role in ROSTER
    )
    work: list[WorkItem] = []
    closes: list[Close] = []
    steps: list[Step] = []

    def day(low: float, high: float, after: int = 0) -> int:
        return max(after + 1, round(rng.uniform(low, high) * days))

    for client in clients:
        role = client.role
        if role.tax_return:
            form = rng.choice(FORMS)
            item = WorkItem(
                _key(rng),
                client,
                f"{TAX_YEAR} {form} - {client.name}",
                "Tax Return",
                rng.choice(TAX_FEES),
            )
            work.append(item)
            documents = day(0.04, 0.25)
            preparation = day(documents / days + 0.06, documents / days + 0.15, documents)
            review = day(0.40, 0.55, preparation)
            filed = day(0.58, 0.72, review)
            for when, (primary, secondary), what in (
                (documents, DOCUMENTS, "documents received"),
                (preparation, PREPARATION, "in preparation"),
                (review, REVIEW, "in review"),
                (filed, FILED, "return filed"),
            ):
                steps.append(
                    Step(
                        when,
                        f"{client.name}: {form} {what}",
                        WorkMove(item, primary, secondary),
                    )
                )
        if role.advisory:
            item = WorkItem(
                _key(rng),
                client,
                f"Cash flow forecast {TAX_YEAR + 1} - {client.name}",
                "Advisory",
                ADVISORY_FEE,
            )
            work.append(item)
            kickoff = day(0.06, 0.12)
            review = day(0.35, 0.45, kickoff)
            delivered = day(0.60, 0.70, review)
            moves: tuple[tuple[int, tuple[str, str | None], str], ...] = (
                (kickoff, ("In Progress", None), "cash-flow project kicked off"),
                (review, ("In Progress", "Review"), "cash-flow forecast in review"),
                (delivered, ("Completed", None), "cash-flow forecast delivered"),
            )
            for when, (primary, secondary), what in moves:
                steps.append(
                    Step(when, f"{client.name}: {what}", WorkMove(item, primary, secondary))
                )
        if role.bookkeeping:
            close = Close(client, PERIOD)
            closes.append(close)
            started = day(0.03, 0.12)
            reviewing = day(0.14, 0.25, started)
            done = day(0.27, 0.40, reviewing)
            steps += [
                Step(
                    started, f"{client.name}: {PERIOD} close started", CloseMove(close, PRE_CLOSE)
                ),
                Step(
                    reviewing,
                    f"{client.name}: {PERIOD} close ready for review",
                    CloseMove(close, RECONCILE, READY_FOR_REVIEW),
                ),
                Step(done, f"{client.name}: {PERIOD} books closed", CloseMove(close, FINAL_REVIEW)),
            ]
    last = max(s.day for s in steps)
    if last >= days:  # cannot happen for MIN_DAYS and the fractions above; a guard for edits
        raise ValueError(f"the schedule runs to day {last} of {days}")
    steps.sort(key=lambda s: (s.day, s.label))
    return Firm(
        seed=seed,
        days=days,
        clients=clients,
        work=tuple(work),
        closes=tuple(closes),
        steps=tuple(steps),
        cheque_after_days=max(2, round(days * 0.15)),
    )
