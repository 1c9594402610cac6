"""Ports: the small interfaces the core needs from the outside world, named by role.

Vendor objects never cross a port: adapters translate to and from the value types defined here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from types import TracebackType
from typing import Protocol, Self

from connector.domain.errors import RejectedError
from connector.domain.events import AuditEvent
from connector.domain.ids import (
    ChargeId,
    ClientKey,
    IdempotencyKey,
    LedgerCustomerId,
    LedgerInvoiceId,
    LedgerPaymentId,
    MilestoneKey,
    SourceId,
    WorkItemKey,
)
from connector.domain.model import (
    Client,
    Engagement,
    Milestone,
    MilestoneState,
    PhaseCompletion,
)
from connector.domain.money import Money

# --------------------------------------------------------------------------- clock


class Clock(Protocol):
    def now(self) -> datetime:
        """Timezone-aware UTC now."""
        ...


# --------------------------------------------------------------------------- practice source


@dataclass(frozen=True, slots=True)
class Delivery:
    """A pushed notification (webhook, import row) kept in the inbox until its source acts on it.

    The body was verified (signature, shape) before it was stored; sources re-fetch the record it
    names, so duplicated and out-of-order deliveries are harmless."""

    id: int
    source: SourceId
    topic: str  # e.g. 'Work', 'Contact', 'close.status_changed', 'phase.completed'
    resource: str  # the key of the record the delivery is about
    received_at: datetime
    body: str


class SourceMemory(Protocol):
    """What a source remembered of the records it watches (its snapshots), read-only.

    Snapshots change only through `PollBatch.remember`, committed with the batch's phases, so a
    crash can never record a transition without the phase it produced."""

    def recall(self, keys: Collection[str]) -> Mapping[str, str]: ...

    def recall_all(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class PollContext:
    """Everything a source gets for one poll: its cursor, its memory, the inbox, the time."""

    cursor: str | None
    memory: SourceMemory
    now: datetime
    deliveries: Sequence[Delivery] = ()


@dataclass(frozen=True, slots=True)
class PollBatch:
    """What a source saw since a cursor: engagements (new or changed), their clients, and phases.

    `remember` (snapshot updates), `handled` (delivery ids acted on) and `failed` (delivery id ->
    why it could not be acted on) are committed in the same transaction as the phases."""

    engagements: Sequence[Engagement]
    phases: Sequence[PhaseCompletion]
    cursor: str | None
    clients: Sequence[Client] = ()
    warnings: Sequence[str] = ()
    remember: Mapping[str, str] = field(default_factory=dict)
    handled: Sequence[int] = ()
    failed: Mapping[int, str] = field(default_factory=dict)


class PracticeSource(Protocol):
    @property
    def source_id(self) -> SourceId: ...

    def poll(self, context: PollContext) -> PollBatch:
        """Changes since `context.cursor` (None: from the beginning), plus what the pending
        deliveries point at. Must be safe to call again with the same context: the core
        deduplicates phases by their natural key."""
        ...

    def get_engagement(self, key: WorkItemKey) -> Engagement | None: ...


# --------------------------------------------------------------------------- ledger


class LedgerInvoiceStatus(StrEnum):
    DRAFT = "draft"  # created, awaiting approval in the ledger (Xero DRAFT)
    OPEN = "open"
    PAID = "paid"
    VOIDED = "voided"


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    description: str
    amount: Money
    item: str | None = None  # the ledger item (QBO Item / Xero ItemCode): its id or exact name
    tax_code: str | None = None  # QBO TaxCode id or name / Xero TaxType


@dataclass(frozen=True, slots=True)
class InvoiceDraft:
    """An invoice to create. `reference` carries the milestone key so it can be found again."""

    customer_id: LedgerCustomerId
    reference: str
    lines: Sequence[InvoiceLine]
    issue_date: date
    due_date: date | None = None
    terms: str | None = None
    doc_number: str | None = None  # None: the ledger numbers it
    draft: bool = False  # created for approval in the ledger (Xero DRAFT)
    send: bool = False  # the plan wants the ledger to email it (done as its own write)

    @property
    def total(self) -> Money:
        first, *rest = [line.amount for line in self.lines]
        for amount in rest:
            first = first + amount
        return first


@dataclass(frozen=True, slots=True)
class LedgerInvoice:
    id: LedgerInvoiceId
    number: str | None
    reference: str
    customer_id: LedgerCustomerId
    total: Money
    balance: Money
    status: LedgerInvoiceStatus
    due_date: date | None = None
    sent: bool = False  # the ledger has emailed it to the customer


@dataclass(frozen=True, slots=True)
class PaymentPosting:
    """A payment to book against an invoice, into the clearing account."""

    invoice_id: LedgerInvoiceId
    customer_id: LedgerCustomerId
    amount: Money
    paid_on: date
    reference: str  # e.g. the charge id, so the posting can be found again


@dataclass(frozen=True, slots=True)
class LedgerChanges:
    """Invoices changed in the ledger since a moment (QBO Change Data Capture, Xero
    If-Modified-Since): paid by cheque, voided, approved, emailed...

    `until` is the moment to ask from next time (the adapter has already subtracted whatever
    overlap its ledger needs). `complete` is False when the ledger could not answer for the
    whole period (e.g. QBO CDC looks back 30 days at most): the caller must then re-read the
    invoices it cares about one by one."""

    invoices: Sequence[LedgerInvoice]
    until: datetime
    complete: bool = True


class NeedKind(StrEnum):
    CUSTOMER = "customer"
    ITEM = "item"
    TAX_CODE = "tax_code"
    TERMS = "terms"
    CURRENCY = "currency"
    ACCOUNT = "account"  # accounts, tax types, tracking named in the ledger connection's options


@dataclass(frozen=True, slots=True)
class LedgerNeeds:
    """What a set of invoices about to be posted depends on in the ledger (pre-flight check)."""

    customers: frozenset[str] = frozenset()
    items: frozenset[str] = frozenset()
    tax_codes: frozenset[str] = frozenset()
    terms: frozenset[str] = frozenset()
    currencies: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LedgerProblem:
    """One thing the ledger does not have (or has archived), said so an admin can fix it.

    `value` is the id or name as written in the config (or the option name, for ACCOUNT
    problems, which break every post)."""

    kind: NeedKind
    value: str
    message: str


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One invoice of a backlog batch, with its own idempotency key."""

    draft: InvoiceDraft
    key: IdempotencyKey


class AccountRole(StrEnum):
    """The ledger accounts money moves through; each is named in `[ledger] options`."""

    CLEARING = "clearing"  # mirrors the gateway balance: payments in, fees, refunds, payouts out
    BANK = "bank"  # where payouts land
    FEES = "fees"  # the gateway's fees (an expense)
    DISPUTES = "disputes"  # money held by open disputes (an asset until won or lost)


@dataclass(frozen=True, slots=True)
class TransferEntry:
    """Money between two of the firm's accounts: a payout (clearing -> bank), a negative payout
    (bank -> clearing), a dispute's hold (clearing -> disputes) or its release."""

    from_account: AccountRole
    to_account: AccountRole
    amount: Money  # positive
    on: date
    reference: str  # the gateway id (po_..., txn_...): written where the ledger can find it
    memo: str


@dataclass(frozen=True, slots=True)
class FeeEntry:
    """A gateway fee paid from the clearing account (amount > 0), or credited back (< 0)."""

    amount: Money
    on: date
    reference: str
    memo: str


@dataclass(frozen=True, slots=True)
class RefundEntry:
    """Money returned to the client for (part of) an invoice: revenue reversed, paid from the
    clearing account (a refund) or from the disputes account (a dispute lost)."""

    invoice_id: LedgerInvoiceId
    customer_id: LedgerCustomerId
    amount: Money  # positive
    on: date
    reference: str
    memo: str
    from_account: AccountRole = AccountRole.CLEARING


@dataclass(frozen=True, slots=True)
class ReturnedPaymentEntry:
    """A bank debit returned after its payment was booked: the clearing account gives the money
    back and the client owes it again, as a new receivable (history is never edited)."""

    invoice_id: LedgerInvoiceId
    customer_id: LedgerCustomerId
    amount: Money  # positive
    on: date
    reference: str
    memo: str


LedgerEntry = TransferEntry | FeeEntry | RefundEntry | ReturnedPaymentEntry


@dataclass(frozen=True, slots=True)
class LedgerPayment:
    """A payment the ledger holds, for `reconcile --check` (ours carry the charge reference)."""

    id: LedgerPaymentId
    reference: str | None  # the gateway reference we wrote, None for payments entered by hand
    invoice_id: LedgerInvoiceId | None
    amount: Money
    paid_on: date
    account: AccountRole | None  # CLEARING when paid into the clearing account


class Ledger(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def batch_limit(self) -> int:
        """Most invoices one `create_invoices` request carries (1: the ledger has no batch)."""
        ...

    @property
    def supports_drafts(self) -> bool:
        """Invoices can wait for approval in the ledger itself (Xero DRAFT): plans that need
        approval are then created as drafts, and approving them there releases collection."""
        ...

    def create_invoice(self, draft: InvoiceDraft, key: IdempotencyKey) -> LedgerInvoice:
        """Create exactly once per key: a repeat with the same key returns the same invoice."""
        ...

    def create_invoices(
        self, items: Sequence[BatchItem]
    ) -> Sequence[LedgerInvoice | RejectedError]:
        """Backlog mode: create up to `batch_limit` invoices in one request. Result i is item
        i's invoice, or the RejectedError for that item alone (the others still post).

        Raises TransientError when the request as a whole failed; `outcome_unknown` when some
        of it may have been applied, so the caller looks the references up before replaying."""
        ...

    def find_invoice(self, draft: InvoiceDraft) -> LedgerInvoice | None:
        """The invoice created from this draft (matched by `draft.reference`, which the adapter
        wrote into the invoice), if any: the lookup after an unknown outcome. The draft's other
        fields (customer, doc number) only narrow the search; its dates may differ from the
        first attempt's."""
        ...

    def find_invoices(self, drafts: Sequence[InvoiceDraft]) -> Mapping[str, LedgerInvoice]:
        """`find_invoice` for many drafts in as few requests as the ledger allows, keyed by
        reference; drafts with no invoice are absent."""
        ...

    def get_invoice(self, invoice_id: LedgerInvoiceId) -> LedgerInvoice: ...

    def send_invoice(self, invoice_id: LedgerInvoiceId, key: IdempotencyKey) -> LedgerInvoice:
        """Ask the ledger to email the invoice to its customer; returns it with `sent` set.
        Callers check `get_invoice(...).sent` after an unknown outcome, never send twice."""
        ...

    def record_payment(self, posting: PaymentPosting, key: IdempotencyKey) -> LedgerPaymentId: ...

    def find_payment(self, posting: PaymentPosting) -> LedgerPaymentId | None:
        """The payment booked from this posting (matched by `posting.reference`), if any."""
        ...

    def changes(self, since: datetime) -> LedgerChanges:
        """Invoices created or changed since `since` (timezone-aware UTC)."""
        ...

    def check(self, needs: LedgerNeeds) -> Sequence[LedgerProblem]:
        """Pre-flight: everything in `needs` (and in the connection's own options: accounts,
        tax types, tracking) the ledger lacks, has archived or has not enabled. Empty: all
        good. May cache what it resolved; never writes."""
        ...

    def post_entry(self, entry: LedgerEntry, key: IdempotencyKey) -> str:
        """Book a transfer, fee, refund or returned payment exactly once per key; returns the
        ledger's id of what it created."""
        ...

    def find_entry(self, entry: LedgerEntry) -> str | None:
        """The ledger's id of the entry booked for `entry.reference`, if any (after an unknown
        outcome); its date and amount narrow the search."""
        ...

    def account_balance(self, role: AccountRole) -> Money:
        """The account's balance now, as the ledger reports it (`reconcile --check`)."""
        ...

    def payments_since(self, since: date) -> Sequence[LedgerPayment]:
        """Customer payments dated on or after `since` (`reconcile --check`)."""
        ...

    def capacity_warning(self, pending_invoices: int) -> str | None:
        """A note for the admin when the ledger's remaining request budget (e.g. Xero's 5,000
        calls a day) will not cover this many invoices today; None when it will."""
        ...


# --------------------------------------------------------------------------- payments


class ChargeStatus(StrEnum):
    SUCCEEDED = "succeeded"
    PROCESSING = "processing"  # ACH: wait, never book yet
    REQUIRES_ACTION = "requires_action"  # the client must authenticate
    FAILED = "failed"


class DeclineKind(StrEnum):
    SOFT = "soft"  # may succeed later: insufficient funds, processing error
    HARD = "hard"  # will not succeed: stolen, lost, do not honor


@dataclass(frozen=True, slots=True)
class SavedMethod:
    customer_id: str
    method_id: str
    kind: str  # 'card' or 'us_bank_account'
    label: str  # 'visa ending 4242'


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    client_key: ClientKey
    amount: Money
    description: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChargeResult:
    id: ChargeId
    status: ChargeStatus
    amount: Money
    decline_code: str | None = None
    decline_kind: DeclineKind | None = None
    message: str | None = None
    action_url: str | None = None


class MovementKind(StrEnum):
    """What moved the payment gateway's balance, in the terms a bookkeeper posts it."""

    PAYMENT = "payment"  # a charge landed in the balance: gross amount, with its fee
    REFUND = "refund"  # money sent back to the client (full or partial)
    DISPUTE_WITHDRAWN = "dispute_withdrawn"  # a dispute opened: the amount (and a fee) withdrawn
    DISPUTE_REINSTATED = "dispute_reinstated"  # a dispute won: the amount (and maybe the fee) back
    DISPUTE_LOST = "dispute_lost"  # a dispute lost: the withdrawn amount is gone (no balance move)
    PAYMENT_RETURNED = "payment_returned"  # a bank debit (ACH) returned after it had succeeded
    PAYOUT = "payout"  # paid out to the bank (amount < 0); a negative payout pulls from it (> 0)
    PAYOUT_FAILED = "payout_failed"  # a payout came back: the money is in the balance again
    FEE = "fee"  # any other gateway fee (amount < 0) or fee credit (amount > 0)


@dataclass(frozen=True, slots=True)
class MoneyMovement:
    """One movement of the gateway balance (a Stripe balance transaction, or a lost dispute).

    `amount` is signed as the balance moved (a charge is positive, a refund or a payout
    negative); `fee` is what the gateway kept on it (negative when it gave a fee back), so the
    balance moved by `amount - fee`."""

    id: str  # balance transaction id (txn_...), or the dispute id for DISPUTE_LOST
    kind: MovementKind
    amount: Money
    fee: Money
    occurred_at: datetime
    charge_id: ChargeId | None = None  # the charge (PaymentIntent) it concerns
    milestone: MilestoneKey | None = None  # from the charge's metadata, when milestone-sync made it
    invoice_id: LedgerInvoiceId | None = None  # likewise
    source: str | None = None  # the gateway object behind it: ch_, re_, dp_, po_...
    payout_id: str | None = None  # PAYOUT / PAYOUT_FAILED: the payout (po_...)
    description: str = ""

    @property
    def net(self) -> Money:
        return self.amount - self.fee


@dataclass(frozen=True, slots=True)
class MovementPage:
    """Movements after a cursor, oldest first, and the cursor to continue from. Reading the same
    cursor again may repeat movements (an overlap): callers deduplicate by movement id."""

    movements: Sequence[MoneyMovement]
    cursor: str | None
    more: bool = False  # another page is waiting right away
    # resume[i]: a cursor to continue from once movements[i] and all before it are booked (a
    # caller that must stop partway keeps its place); empty when the gateway offers none
    resume: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class SetupLink:
    """Where a client saves a card or bank account (Stripe Checkout in setup mode)."""

    url: str
    session_id: str
    expires_at: datetime | None = None


class PaymentGateway(Protocol):
    def saved_method(self, client_key: ClientKey) -> SavedMethod | None:
        """The client's default saved card or bank account, if any."""
        ...

    def charge(self, request: ChargeRequest, key: IdempotencyKey) -> ChargeResult:
        """Charge at most once per key; a declined charge returns FAILED rather than raising."""
        ...

    def find_charge(self, request: ChargeRequest, key: IdempotencyKey) -> ChargeResult | None:
        """The charge made for this request and key, if any (after an unknown outcome). Must not
        miss a charge that exists: a miss means a second charge."""
        ...

    def get_charge(self, charge_id: ChargeId) -> ChargeResult: ...

    def invite(self, client_key: ClientKey, client_name: str, email: str | None) -> SetupLink:
        """A link for the client to save a card or US bank account (with its mandate). When
        they finish, their method becomes the default `saved_method` returns."""
        ...

    def movements(self, cursor: str | None) -> MovementPage:
        """Balance movements after `cursor` (None: from the account's start), oldest first."""
        ...

    def balance(self) -> Money:
        """The whole gateway balance now (available and pending), for `reconcile --check`."""
        ...

    def payout_movements(self, payout_id: str) -> Sequence[MoneyMovement]:
        """The movements a payout paid out (its balance transactions), for `reconcile --check`."""
        ...


# --------------------------------------------------------------------------- notices


@dataclass(frozen=True, slots=True)
class Notice:
    """A message to a client (e.g. a price increase before it takes effect)."""

    client_key: ClientKey
    client_name: str
    email: str | None  # None: the client has no address on file
    subject: str
    body: str


class Notifier(Protocol):
    def send(self, notice: Notice, key: IdempotencyKey) -> str:
        """Send the notice; returns the message id. Raises RejectedError when it cannot go (no
        address), TransientError when the mail server is unreachable."""
        ...


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class OAuthToken:
    access_token: str
    refresh_token: str
    expires_at: datetime
    refresh_expires_at: datetime | None = None
    realm: str | None = None  # QBO realm id or Xero tenant id

    def __repr__(self) -> str:  # tokens never reach a log through repr
        return f"OAuthToken(realm={self.realm!r}, expires_at={self.expires_at.isoformat()})"


class TokenStore(Protocol):
    def load(self, connection: str) -> OAuthToken | None: ...

    def save(self, connection: str, token: OAuthToken) -> None:
        """Persist (encrypted at rest) and commit before the token is used."""
        ...


# --------------------------------------------------------------------------- state store


class PhaseStatus(StrEnum):
    NEW = "new"
    MAPPED = "mapped"  # triggered one or more milestones
    IGNORED = "ignored"  # matched a plan (or an ignore rule) but triggers nothing
    UNMAPPED = "unmapped"  # no plan matched: needs an admin


@dataclass(frozen=True, slots=True)
class StoredPhase:
    id: int
    phase: PhaseCompletion
    status: PhaseStatus
    reason: str | None = None


class OperationKind(StrEnum):
    CREATE_INVOICE = "create_invoice"
    SEND_INVOICE = "send_invoice"
    NOTIFY = "notify"  # a notice to a client (price increase)
    POST_ENTRY = "post_entry"  # a transfer, fee, refund or returned payment (the money trail)
    CHARGE = "charge"
    RECORD_PAYMENT = "record_payment"


class OperationStatus(StrEnum):
    PENDING = "pending"  # intent recorded; the call may or may not have happened
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # rejected for good


@dataclass(frozen=True, slots=True)
class Operation:
    """One external write, recorded before the call (the intent log)."""

    key: IdempotencyKey
    kind: OperationKind
    subject: MilestoneKey
    payload_hash: str
    status: OperationStatus
    created_at: datetime
    updated_at: datetime
    external_id: str | None = None
    attempts: int = 0
    last_error: str | None = None


class MilestoneRepository(Protocol):
    def get(self, key: MilestoneKey) -> Milestone | None: ...

    def add(self, milestone: Milestone) -> None: ...

    def update(self, milestone: Milestone) -> Milestone:
        """Save a changed milestone; raises InvariantViolation if `version` is stale.
        Returns the milestone with its version bumped."""
        ...

    def list(
        self,
        states: frozenset[MilestoneState] | None = None,
        work_item: tuple[SourceId, WorkItemKey] | None = None,
    ) -> list[Milestone]: ...


class EngagementRepository(Protocol):
    def upsert(self, engagement: Engagement) -> bool:
        """Insert or replace; True when it was new or changed."""
        ...

    def get(self, source: SourceId, key: WorkItemKey) -> Engagement | None: ...

    def list(self) -> list[Engagement]: ...


class ClientRepository(Protocol):
    def upsert(self, client: Client) -> None: ...

    def get(self, source: SourceId, key: ClientKey) -> Client | None: ...

    def list(self) -> list[Client]: ...


class PhaseRepository(Protocol):
    def add(self, phase: PhaseCompletion) -> bool:
        """Store a phase once: False when its natural key was already stored."""
        ...

    def list(self, status: PhaseStatus | None = None) -> list[StoredPhase]: ...

    def mark(self, phase_id: int, status: PhaseStatus, reason: str | None = None) -> None: ...


class OperationLog(Protocol):
    def get(self, key: IdempotencyKey) -> Operation | None: ...

    def add(self, operation: Operation) -> None:
        """Record an intent; the key is unique."""
        ...

    def update(self, operation: Operation) -> None: ...

    def list(
        self, status: OperationStatus | None = None, subject: MilestoneKey | None = None
    ) -> list[Operation]: ...


class CursorRepository(Protocol):
    def get(self, system: str, stream: str) -> str | None: ...

    def set(self, system: str, stream: str, value: str | None) -> None: ...


class AuditLog(Protocol):
    def record(self, event: AuditEvent) -> None: ...

    def list(self, limit: int = 100, subject: str | None = None) -> list[AuditEvent]:
        """Newest first."""
        ...


class SourceStateRepository(Protocol):
    """Per-source snapshots of watched records (opaque strings the source adapter owns)."""

    def get_many(self, source: SourceId, keys: Collection[str]) -> dict[str, str]: ...

    def all(self, source: SourceId) -> dict[str, str]: ...

    def put_many(self, source: SourceId, values: Mapping[str, str]) -> None: ...


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StoredDelivery:
    delivery: Delivery
    status: DeliveryStatus
    note: str | None = None


class Inbox(Protocol):
    """Verified pushes (webhooks, imports), deduplicated by (source, dedupe key)."""

    def add(
        self,
        source: SourceId,
        topic: str,
        resource: str,
        dedupe_key: str,
        body: str,
        received_at: datetime,
    ) -> bool:
        """Store a delivery once: False when (source, dedupe_key) was already stored."""
        ...

    def pending(self, source: SourceId, limit: int = 500) -> list[Delivery]: ...

    def mark(
        self, ids: Collection[int], status: DeliveryStatus, note: str | None = None
    ) -> None: ...

    def recent(self, source: SourceId | None = None, limit: int = 50) -> list[StoredDelivery]: ...

    def counts(self) -> dict[tuple[str, DeliveryStatus], int]:
        """Deliveries per (source, status), for `status`."""
        ...


class UnitOfWork(Protocol):
    """One short transaction over the state store of one tenant."""

    milestones: MilestoneRepository
    engagements: EngagementRepository
    clients: ClientRepository
    phases: PhaseRepository
    operations: OperationLog
    cursors: CursorRepository
    audit: AuditLog
    source_state: SourceStateRepository
    inbox: Inbox

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Roll back anything not committed."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class UnitOfWorkFactory(Protocol):
    def __call__(self) -> UnitOfWork: ...
