"""The config loader: good files load; every mistake is reported at once with its key and line."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from connector.config import (
    FixedAmount,
    LedgerKind,
    PaymentsKind,
    PercentOfFee,
    Remainder,
    SourceKind,
)
from connector.domain.errors import ConfigError
from connector.domain.model import Cadence, CollectionMode, TriggerKind
from connector.domain.money import Money
from mappings.loader import ConfigErrors, ConfigIssue, load_config, load_config_text
from mappings.starter import STARTER_CONFIG

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
[firm]
id = "smith-cpa"
name = "Smith & Co"
currency = "USD"

[[sources]]
id = "karbon"
kind = "karbon"
token_env = "KARBON_TOKEN"
access_key_env = "KARBON_ACCESS_KEY"

[[sources]]
id = "keeper"
kind = "keeper"
base_url = "https://closes.example.com/api"
token_env = "CLOSES_TOKEN"

[ledger]
kind = "memory"

[payments]
kind = "memory"
"""

TAX_PLAN = """
[[plans]]
id = "tax-return"
name = "Tax return"
match = { source = "karbon", work_type = "Tax Return" }

[[plans.milestones]]
id = "documents"
name = "Documents received"
trigger = { status = "Ready To Start", secondary = "Documents received" }
percent = 40

[[plans.milestones]]
id = "review"
name = "Review"
trigger = { status = "In Progress", secondary = "Review" }
percent = 40

[[plans.milestones]]
id = "filed"
name = "Filed"
trigger = { status = "Completed" }
remainder = true
"""


def plan_with(keys: str) -> str:
    """BASE and the tax plan, with `keys` added to the plan's table."""
    return BASE + TAX_PLAN.replace('name = "Tax return"', f'name = "Tax return"\n{keys}')


def errors_of(text: str) -> ConfigErrors:
    with pytest.raises(ConfigErrors) as caught:
        load_config_text(text, "firm.toml")
    return caught.value


def line_of(text: str, fragment: str) -> int:
    """The 1-based line of the first line of `text` containing `fragment`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in text")


def issue_at(errors: ConfigErrors, path: str) -> ConfigIssue:
    matching = [issue for issue in errors.issues if issue.path == path]
    assert matching, f"no issue at {path}; got:\n{errors}"
    return matching[0]


# --------------------------------------------------------------------------- good files


def test_the_example_config_loads() -> None:
    config = load_config(ROOT / "config.example.toml")

    assert config.firm.currency == "USD"
    assert {s.kind for s in config.sources} == {
        SourceKind.KARBON,
        SourceKind.KEEPER,
        SourceKind.CSV,
    }
    assert config.server.webhook_url("karbon") == "https://sync.smithcpa.example/webhooks/karbon"
    assert config.ledger.kind is LedgerKind.QUICKBOOKS
    assert config.payments.kind is PaymentsKind.STRIPE
    assert config.payments.secret_env["secret_key"] == "STRIPE_SECRET_KEY"
    tax = config.plan("tax-return")  # type: ignore[arg-type]
    assert tax is not None
    assert [type(m.amount) for m in tax.milestones] == [PercentOfFee, PercentOfFee, Remainder]
    monthly = config.plan("monthly-close")  # type: ignore[arg-type]
    assert monthly is not None and monthly.recurring is Cadence.MONTHLY
    assert monthly.price_increase is not None
    advisory = config.plan("advisory")  # type: ignore[arg-type]
    assert advisory is not None
    assert all(isinstance(m.amount, FixedAmount) for m in advisory.milestones)
    modes = {c.collection_mode for c in config.clients.values()}
    assert {CollectionMode.INVOICE_ONLY, CollectionMode.APPROVAL_REQUIRED} <= modes
    assert config.ignore


def test_the_starter_config_loads_and_needs_no_credentials() -> None:
    config = load_config_text(STARTER_CONFIG, "milestone-sync.toml")

    assert all(s.kind is SourceKind.MEMORY for s in config.sources)
    assert config.ledger.kind is LedgerKind.MEMORY
    assert config.payments.kind is PaymentsKind.MEMORY
    assert config.plans


def test_a_config_maps_onto_the_frozen_models() -> None:
    text = (
        BASE
        + """
[defaults]
item = "Services"
terms = "Net 15"
send_invoice = true

[collection]
default_mode = "auto_charge"
retry_days = [2, 4]

[schedule]
poll_seconds = 60

[[plans]]
id = "monthly"
name = "Monthly bookkeeping"
match = { source = "keeper" }
recurring = "monthly"
fee = "450.00"
collection_mode = "approval_required"
invoice = { item = "Bookkeeping", send_invoice = false }
price_increase = { percent = "2.5", anniversary = 2026-01-01 }
description = "Bookkeeping {period} for {client}"

[[plans.milestones]]
id = "close"
name = "Month closed"
trigger = { close_status = "Done" }
percent = 100
offset_days = 30

[clients."CL-1"]
fees = { monthly = "650" }
ledger_customer_id = "58"
terms = "Net 30"
"""
    )
    config = load_config_text(text, "firm.toml")

    assert config.sources[0].secret_env == {
        "token": "KARBON_TOKEN",
        "access_key": "KARBON_ACCESS_KEY",
    }
    assert config.collection.default_mode is CollectionMode.AUTO_CHARGE
    assert config.collection.retry_days == (2, 4)
    assert config.schedule.poll_seconds == 60
    assert config.defaults.send_invoice is True
    plan = config.plans[0]
    assert plan.fee == Money("450.00", "USD")
    assert plan.recurring is Cadence.MONTHLY
    assert plan.invoice.item == "Bookkeeping" and plan.invoice.send_invoice is False
    assert plan.price_increase is not None and plan.price_increase.percent == Decimal("2.5")
    assert plan.price_increase.notice_days == 30
    milestone = plan.milestones[0]
    assert milestone.trigger.kind is TriggerKind.CLOSE_STATUS
    assert milestone.offset_days == 30
    client = config.clients["CL-1"]  # type: ignore[index]
    assert client.fees["monthly"] == Money("650.00", "USD")  # type: ignore[index]
    assert client.ledger_customer_id == "58"
    assert config.database_url is None


def test_the_revision_changes_with_meaning_not_with_layout() -> None:
    text = BASE + TAX_PLAN
    revision = load_config_text(text, "a.toml").revision

    assert len(revision) == 12
    relaid = "# a comment\n" + text.replace('name = "Tax return"', 'name   =   "Tax return"  # x')
    assert load_config_text(relaid, "b.toml").revision == revision
    edited = text.replace(
        'percent = 40\n\n[[plans.milestones]]\nid = "review"',
        'percent = 30\n\n[[plans.milestones]]\nid = "review"',
    )
    assert load_config_text(edited, "c.toml").revision != revision


# --------------------------------------------------------------------------- one mistake each

BAD_INPUTS: dict[str, tuple[str, str, str, str | None]] = {
    # name: (text, path, message fragment, fragment of the line it should point at)
    "unknown key": (
        plan_with("priorty = 5"),
        "plans[0].priorty",
        "did you mean 'priority'",
        "priorty = 5",
    ),
    "percentages not totalling 100": (
        BASE + TAX_PLAN.replace("remainder = true", "percent = 10"),
        "plans[0].milestones",
        "total 90, not 100",
        "[[plans.milestones]]",
    ),
    "negative amount": (
        BASE + TAX_PLAN.replace("percent = 40", 'amount = "-5.00"', 1),
        "plans[0].milestones[0].amount",
        "must not be negative",
        'amount = "-5.00"',
    ),
    "float amount": (
        plan_with("fee = 1500.0"),
        "plans[0].fee",
        'fee = "1500.00"',
        "fee = 1500.0",
    ),
    "float milestone amount": (
        BASE + TAX_PLAN.replace("percent = 40", "amount = 1500.0", 1),
        "plans[0].milestones[0].amount",
        'amount = "1500.00"',
        "amount = 1500.0",
    ),
    "float percent": (
        BASE + TAX_PLAN.replace("percent = 40", "percent = 33.33", 1),
        "plans[0].milestones[0].percent",
        'percent = "33.33"',
        "percent = 33.33",
    ),
    "unknown currency": (
        BASE.replace('currency = "USD"', 'currency = "USX"') + TAX_PLAN,
        "firm.currency",
        "unknown currency 'USX'",
        'currency = "USX"',
    ),
    "lower-case currency": (
        plan_with('currency = "eur"'),
        "plans[0].currency",
        "upper case",
        'currency = "eur"',
    ),
    "plan with no milestones": (
        BASE + '\n[[plans]]\nid = "empty"\nname = "Empty"\nmatch = { work_type = "X" }\n',
        "plans[0].milestones",
        "no milestones",
        "[[plans]]",
    ),
    "secret written inline": (
        BASE.replace('token_env = "KARBON_TOKEN"', 'token = "abc123"') + TAX_PLAN,
        "sources[0].token",
        'name the environment variable instead: token_env = "KARBON_TOKEN"',
        'token = "abc123"',
    ),
    "secret in options": (
        BASE.replace('kind = "keeper"', 'kind = "keeper"\noptions = { api_key = "k" }') + TAX_PLAN,
        "sources[1].options.api_key",
        "name the environment variable instead",
        'options = { api_key = "k" }',
    ),
    "stripe key as a value": (
        BASE.replace('kind = "memory"\n', 'kind = "memory"\nnote = "sk_live_abcdefghijkl"\n', 1)
        + TAX_PLAN,
        "ledger.note",
        "name the environment variable instead",
        "sk_live_",
    ),
    "unknown placeholder": (
        plan_with('description = "{job} for {client}"'),
        "plans[0].description",
        "unknown placeholder {job}",
        "description =",
    ),
    "duplicate plan ids": (
        BASE + TAX_PLAN + TAX_PLAN.replace('work_type = "Tax Return"', 'work_type = "Audit"'),
        "plans[1].id",
        "duplicate plan id 'tax-return'",
        None,
    ),
    "duplicate milestone ids": (
        BASE + TAX_PLAN.replace('id = "review"', 'id = "documents"'),
        "plans[0].milestones[1].id",
        "duplicate milestone id 'documents'",
        None,
    ),
    "two remainders": (
        BASE
        + TAX_PLAN.replace(
            'percent = 40\n\n[[plans.milestones]]\nid = "filed"',
            'remainder = true\n\n[[plans.milestones]]\nid = "filed"',
        ),
        "plans[0].milestones[2].remainder",
        "more than one remainder",
        None,
    ),
    "fixed and percent without remainder": (
        BASE + TAX_PLAN.replace("remainder = true", 'amount = "200.00"'),
        "plans[0].milestones",
        "cannot add up to the fee exactly",
        None,
    ),
    "percentages leave nothing for the remainder": (
        BASE + TAX_PLAN.replace("percent = 40", "percent = 50"),
        "plans[0].milestones",
        "leaving nothing for the remainder",
        None,
    ),
    "fixed amounts beyond the fee": (
        plan_with('fee = "100.00"').replace("percent = 40", 'amount = "80.00"'),
        "plans[0].milestones",
        "negative remainder",
        None,
    ),
    "too many decimals for the currency": (
        plan_with('currency = "JPY"\nfee = "1000.50"'),
        "plans[0].fee",
        "JPY amounts take no decimal places",
        'fee = "1000.50"',
    ),
    "recurring plan without a fee": (
        BASE
        + TAX_PLAN.replace(
            'match = { source = "karbon", work_type = "Tax Return" }',
            'match = { source = "keeper" }\nrecurring = "monthly"',
        ),
        "plans[0].fee",
        "needs a fee",
        None,
    ),
    "price increase without a plan fee": (
        plan_with("price_increase = { percent = 5, anniversary = 2026-01-01 }"),
        "plans[0].price_increase",
        "set fee",
        "price_increase =",
    ),
    "price increase of zero": (
        plan_with('fee = "1.00"\nprice_increase = { percent = 0, anniversary = 2026-01-01 }'),
        "plans[0].price_increase.percent",
        "more than 0",
        "price_increase =",
    ),
    "negative notice": (
        plan_with(
            'fee = "1.00"\n'
            "price_increase = { percent = 5, anniversary = 2026-01-01, notice_days = -1 }"
        ),
        "plans[0].price_increase.notice_days",
        "at least 0",
        "price_increase =",
    ),
    "ambiguous plans": (
        BASE
        + TAX_PLAN
        + TAX_PLAN.replace('id = "tax-return"', 'id = "tax-return-2"').replace(
            '"Tax Return"', '"tax return"'
        ),
        "plans[1].match",
        "plans 'tax-return' (plans[0]) and 'tax-return-2' (plans[1]) match the same",
        None,
    ),
    "override for an unknown plan": (
        BASE + TAX_PLAN + '\n[clients."CL-1"]\nfees = { bookkeeping = "650.00" }\n',
        "clients.CL-1.fees.bookkeeping",
        "unknown plan 'bookkeeping'",
        "fees = {",
    ),
    "unknown collection mode": (
        BASE + TAX_PLAN + '\n[clients."CL-1"]\ncollection_mode = "charge"\n',
        "clients.CL-1.collection_mode",
        "'auto_charge', 'invoice_only', 'approval_required'",
        'collection_mode = "charge"',
    ),
    "auto charge without payments": (
        BASE.replace('[payments]\nkind = "memory"', '[payments]\nkind = "none"')
        + TAX_PLAN
        + '\n[collection]\ndefault_mode = "auto_charge"\n',
        "collection.default_mode",
        "auto_charge needs a payment gateway",
        'default_mode = "auto_charge"',
    ),
    "bad regular expression": (
        BASE + TAX_PLAN.replace('work_type = "Tax Return"', 'title_pattern = "(unclosed"'),
        "plans[0].match.title_pattern",
        "not a valid regular expression",
        "title_pattern",
    ),
    "unknown source": (
        BASE + TAX_PLAN.replace('source = "karbon"', 'source = "xero"'),
        "plans[0].match.source",
        "no [[sources]] has id 'xero'",
        'source = "xero"',
    ),
    "trigger with two kinds": (
        BASE
        + TAX_PLAN.replace(
            'trigger = { status = "Completed" }',
            'trigger = { status = "Completed", close_status = "Done" }',
        ),
        "plans[0].milestones[2].trigger",
        "exactly one of status, close_status or section_done",
        'close_status = "Done"',
    ),
    "milestone with two amounts": (
        BASE + TAX_PLAN.replace("remainder = true", 'remainder = true\namount = "5.00"'),
        "plans[0].milestones[2]",
        "exactly one of amount",
        None,
    ),
    "empty ignore rule": (
        BASE + TAX_PLAN + '\n[[ignore]]\nid = "all"\nmatch = {}\nreason = "nothing"\n',
        "ignore[0].match",
        "would ignore every engagement",
        "match = {}",
    ),
    "missing ledger": (
        BASE.replace('[ledger]\nkind = "memory"\n', "") + TAX_PLAN,
        "ledger",
        "missing the [ledger] table",
        None,
    ),
    "plans as a table": (
        BASE + '\n[plans]\nid = "x"\n',
        "plans",
        "[[plans]]",
        "[plans]",
    ),
    "database password": (
        BASE + TAX_PLAN + '\n[database]\nurl = "postgresql://app:hunter2@db/ms"\n',
        "database.url",
        "holds a password",
        'url = "postgresql',
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_each_mistake_is_reported_with_its_key_and_line(name: str) -> None:
    text, path, fragment, line_fragment = BAD_INPUTS[name]

    errors = errors_of(text)

    issue = issue_at(errors, path)
    assert fragment in issue.message, str(errors)
    if line_fragment is not None:
        assert issue.line == line_of(text, line_fragment), str(errors)
    else:
        assert issue.line is not None or path in ("ledger", "sources")
    assert path in str(errors)


def test_malformed_toml_is_one_error_with_line_and_column() -> None:
    text = BASE + TAX_PLAN.replace("percent = 40", "percent = = 40", 1)

    errors = errors_of(text)

    assert len(errors.issues) == 1
    issue = errors.issues[0]
    assert issue.line == line_of(text, "percent = = 40")
    assert "malformed TOML" in issue.message and "column" in issue.message


def test_a_secret_is_reported_once_not_also_as_an_unknown_key() -> None:
    errors = errors_of(
        BASE.replace('token_env = "KARBON_TOKEN"', 'token_env = "KARBON_TOKEN"\npassword = "x"')
        + TAX_PLAN
    )

    assert [issue.path for issue in errors.issues] == ["sources[0].password"]
    assert "x" not in errors.issues[0].message.split(":")[0]


def test_every_mistake_in_a_file_is_reported_at_once() -> None:
    text = (
        BASE.replace('currency = "USD"', 'currency = "usd"').replace(
            'token_env = "KARBON_TOKEN"', 'token = "abc"'
        )
        + TAX_PLAN.replace("percent = 40", "percent = 65", 1).replace(
            'name = "Tax return"', 'name = "Tax return"\nsurprise = 1'
        )
        + """
[[plans]]
id = "advisory"
name = "Advisory"
match = { work_type = "Advisory" }
description = "{engagement} {oops}"

[[plans.milestones]]
id = "kickoff"
name = "Kick-off"
trigger = { status = "In Progress" }
amount = 1500.0

[[plans]]
id = "empty"
name = "Empty"
match = { work_type = "Other" }

[clients."CL-9"]
fees = { nope = "1.00" }
"""
    )

    errors = errors_of(text)

    paths = [issue.path for issue in errors.issues]
    expected = {
        "firm.currency",
        "sources[0].token",
        "plans[0].surprise",
        "plans[0].milestones",  # 65 + 40 leave no remainder: checked though the plan is broken
        "plans[1].description",
        "plans[1].milestones[0].amount",
        "plans[2].milestones",
        "clients.CL-9.fees.nope",
    }
    assert expected - set(paths) == set(), str(errors)
    lines = [issue.line for issue in errors.issues]
    assert all(line is not None for line in lines)
    assert lines == sorted(lines)  # in file order
    rendered = str(errors)
    assert rendered.startswith("firm.toml: ")
    assert len(rendered.splitlines()) == len(errors.issues) + 1


def test_config_errors_are_config_errors() -> None:
    errors = errors_of(BASE + '\n[[plans]]\nid = "p"\nname = "P"\nmatch = {}\n')
    assert isinstance(errors, ConfigError)
    assert errors.source_name == "firm.toml"


def test_a_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors, match="milestone-sync init"):
        load_config(tmp_path / "nope.toml")


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "firm.toml"
    path.write_text(BASE + TAX_PLAN, encoding="utf-8")
    assert load_config(path).plans[0].id == "tax-return"


def test_source_options_and_secrets_are_checked_per_kind() -> None:
    text = (
        (ROOT / "config.example.toml")
        .read_text()
        .replace(
            'options = { sweep_minutes = "30", budget_per_minute = "100" }',
            'options = { sweep_minute = "30" }\nwebhook_secret_env = "X"',
        )
        .replace('token_env = "CLOSES_API_TOKEN"\n', "")
    )
    with pytest.raises(ConfigErrors) as caught:
        load_config_text(text, "example.toml")
    messages = "\n".join(str(issue) for issue in caught.value.issues)
    assert "sources[0].options.sweep_minute" in messages and "'sweep_minutes'" in messages
    assert "sources[0].webhook_secret_env" in messages and "does not use" in messages
    assert "sources[1]" in messages and "token_env" in messages


def example_with_ledger(ledger: str) -> str:
    text = (ROOT / "config.example.toml").read_text()
    start = text.index("[ledger]\n")
    end = text.index("[payments]\n")
    return text[:start] + ledger + "\n" + text[end:]


def test_ledger_options_and_secrets_are_checked_per_kind() -> None:
    text = example_with_ledger(
        '[ledger]\nkind = "quickbooks"\nclient_id_env = "QBO_CLIENT_ID"\n'
        'options = { realm = "1", environment = "staging", minorversion = "70", '
        'invoice_number = "MILESTONE-SYNC-{seq:08d}", batch_from = "1" }\n'
    )
    with pytest.raises(ConfigErrors) as caught:
        load_config_text(text, "example.toml")
    messages = "\n".join(str(issue) for issue in caught.value.issues)
    assert "ledger.options.realm" in messages and "'realm_id'" in messages
    assert "client_secret_env" in messages
    assert "ledger.options.environment" in messages and "'sandbox'" in messages
    assert "ledger.options.minorversion" in messages and "75" in messages
    assert "ledger.options.invoice_number" in messages and "21" in messages
    assert "ledger.options.batch_from" in messages and '"off"' in messages


def test_a_good_xero_ledger_passes() -> None:
    text = example_with_ledger(
        '[ledger]\nkind = "xero"\nclient_id_env = "XERO_CLIENT_ID"\n'
        'client_secret_env = "XERO_CLIENT_SECRET"\n'
        'options = { sales_account = "200", clearing_account = "090", '
        'line_amount_types = "Exclusive", invoice_number = "MS-{seq:05d}", batch_from = "off" }\n'
    )
    config = load_config_text(text, "example.toml")
    assert config.ledger.options["sales_account"] == "200"


def test_an_invoice_number_template_must_number() -> None:
    text = example_with_ledger(
        '[ledger]\nkind = "memory"\noptions = { invoice_number = "MS-{n}" }\n'
    )
    with pytest.raises(ConfigErrors) as caught:
        load_config_text(text, "example.toml")
    assert "must contain {seq}" in str(caught.value)
